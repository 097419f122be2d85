"""The API: group, version, kinds, and the labels on every object the operator makes."""

from __future__ import annotations

from typing import Final

API_GROUP: Final = "ai.azaion.com"
API_VERSION: Final = "v1alpha1"

TRAININGRUN_KIND: Final = "TrainingRun"
TRAININGRUN_PLURAL: Final = "trainingruns"
ANNOTATIONCONSUMER_KIND: Final = "AnnotationConsumer"
ANNOTATIONCONSUMER_PLURAL: Final = "annotationconsumers"

#: The run a Job or pod belongs to, and the attempt it is.
LABEL_TRAININGRUN: Final = f"{API_GROUP}/trainingrun"
LABEL_ATTEMPT: Final = f"{API_GROUP}/attempt"
#: The consumer a Deployment, its pods and its offset claim belong to.
LABEL_ANNOTATIONCONSUMER: Final = f"{API_GROUP}/annotationconsumer"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "azaion-operator"
