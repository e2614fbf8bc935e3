"""What leaves a run folder for readers: the dataset card, report, licences, the model registry and the Hub."""
