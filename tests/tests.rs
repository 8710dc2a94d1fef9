//! Integration tests: the real `carwatch` binary against data and servers that each
//! test makes itself. Shared helpers are in `support/`.

mod support;

mod check;
mod faults;
mod fleet;
mod homeassistant;
mod operations;
mod performance;
mod sightings;
mod train_classify;
mod watch;
mod web;
mod wide;
