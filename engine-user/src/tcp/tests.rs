//! Scenario tests of the TCP core: one connection driven segment by segment in virtual time.
