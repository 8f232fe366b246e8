//! The MESH API client.
