//! Composing L1's nested walk with L0's mapping of L1's memory.
