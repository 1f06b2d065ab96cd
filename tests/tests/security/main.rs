//! Security tests across both APIs: JWT handling, command input, limits, secrets in logs, and
//! proptest fuzzing of every parser of untrusted input.
//!
//! One test binary per area, not one per file: each binary links the whole dependency set, so
//! fewer binaries build faster and take a fraction of the disk.

mod auth;
mod command_input;
mod consistency_tokens;
mod fuzz_parsers;
mod limits;
mod path_ids;
mod secrets;
mod stack_errors;
