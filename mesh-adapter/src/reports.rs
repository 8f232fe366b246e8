//! MESH non-delivery reports: polled from the service's own mailbox and forwarded to core.
