//! Network namespaces for interception tests.
