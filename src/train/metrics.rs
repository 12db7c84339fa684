//! Training metrics (in progress).
