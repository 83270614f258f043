"""Data-parallel replicas of glmv's engine behind one server: router, replica processes, their wire (`--data-parallel-size`)."""
