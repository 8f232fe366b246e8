//! In-process MESH fake.
