//! The ONLY module with `unsafe`: thin syscall wrappers returning `io::Result`.
//! Every `unsafe` block carries a `// SAFETY:` comment.

pub mod seccomp;
