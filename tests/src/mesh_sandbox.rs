//! The real mesh-sandbox as a child process.
