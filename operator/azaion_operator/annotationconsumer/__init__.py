"""The AnnotationConsumer controller: handlers, builders of its Deployment and offset claim, its health conditions."""
