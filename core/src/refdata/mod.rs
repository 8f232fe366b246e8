//! Readers for the official reference data files and the demographics CSV.
