"""Programs that run inside the pods: training and the annotation consumer."""
