//! Unit tests of the lifecycle over in-memory doubles of ZFS and mounts.

mod doubles;
mod lifecycle;
