//! One module per subcommand: its arguments and what it runs. The daemons' shared start-up
//! (configuration layers, logs, the metrics endpoint, signals) is in `crate::daemon`.

pub mod bench;
pub mod config;
pub mod keys;
pub mod pool;
pub mod sim;
pub mod stat;
pub mod up;
