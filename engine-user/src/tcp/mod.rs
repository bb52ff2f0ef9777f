//! The sans-IO TCP core: a deterministic TCP implementation that never reads a clock or touches
//! a socket. Segments and the current time go in; segments, timers and events come out.
