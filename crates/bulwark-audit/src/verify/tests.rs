//! Tampering tests.
