//! Support for Strait end-to-end tests.
