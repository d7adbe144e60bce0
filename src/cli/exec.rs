//! exec
use super::CmdResult;
pub fn run(args: Vec<String>) -> CmdResult { let _ = args; super::fail("todo") }
