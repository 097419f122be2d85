"""The TrainingRun workload: dataset, training, export, encryption, publishing."""
