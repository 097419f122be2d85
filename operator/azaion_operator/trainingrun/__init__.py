"""The TrainingRun controller.

Handlers that trigger, a pure lifecycle that decides, builders of its Jobs, the GPU queue.
"""
