"""Training: input pipelines, optimizers, resumable fit with budget and test curve, classifiers, the DCGAN loop."""
