//! PLACEHOLDER until the systemd branch is merged.
pub(crate) fn notify_ready() {}
pub(crate) fn notify_stopping() {}
