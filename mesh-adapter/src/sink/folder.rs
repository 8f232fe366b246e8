//! The folder sink: one file per delivery under `<dir>/<mailbox>/<workflow>/`.
