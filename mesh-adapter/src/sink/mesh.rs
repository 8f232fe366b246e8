//! The MESH sink: sends each delivery to MESH with the MESH client.
