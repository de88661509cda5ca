//! Channel state files: a journal of state events and checkpoints. (Being written.)
