"""``python -m azaion_workloads.queue`` runs the consumer like ``azaion-queue``."""

import sys

from azaion_workloads.queue.cli import main

sys.exit(main())
