//! Delivery error classes.
