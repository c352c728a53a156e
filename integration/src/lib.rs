//! Support for the integration tests (see tests/).
