//! Retry policy: capped exponential backoff with full jitter, honouring `Retry-After`.
