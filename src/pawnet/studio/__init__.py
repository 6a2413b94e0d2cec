"""`pawnet studio`: review, fix and grow a folder of photos in a local page; retrain
in seconds."""
