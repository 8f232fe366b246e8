//! The `nems` launcher.
fn main() {}
