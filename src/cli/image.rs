//! image
use super::CmdResult;
pub fn run(args: &[String]) -> CmdResult { let _ = args; super::fail("todo") }
pub fn publish(args: &[String]) -> CmdResult { let _ = args; super::fail("todo") }
