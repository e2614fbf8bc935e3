"""A run's kept rows in face-recognition training formats: ImageFolder, RecordIO, LMDB and verification pairs."""
