"""The AnnotationConsumer workload: RabbitMQ Streams to the data volume."""
