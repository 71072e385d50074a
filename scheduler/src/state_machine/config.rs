//! The replicated configuration: the accounts file and the network topology, parsed when
//! set and kept parsed beside the text.

use super::*;

impl StateMachine {
    pub(super) fn set_accounts(&mut self, toml: String) -> Applied {
        match crate::accounts::parse(&toml) {
            Ok(cfg) => {
                self.accounts = cfg;
                self.state.accounts_toml = toml;
                (Outcome::Done, vec![])
            }
            Err(e) => (Outcome::Rejected(e.to_string()), vec![]),
        }
    }

    pub(super) fn set_topology(&mut self, conf: String) -> Applied {
        match policies::topology::NetworkConf::parse(&conf) {
            Ok(network) => {
                self.network = network;
                self.state.topology_conf = conf;
                self.topology = TopologyCache::default();
                (Outcome::Done, vec![])
            }
            Err(e) => (Outcome::Rejected(e.to_string()), vec![]),
        }
    }

    /// The topology.conf text in force (empty: none).
    pub fn topology_conf(&self) -> &str {
        &self.state.topology_conf
    }

    /// The topology model: the network tree and every node's GPU links.
    pub fn topology(&self) -> std::sync::Arc<policies::topology::Topology> {
        self.topology
            .0
            .get_or_init(|| {
                let links: Vec<_> = self
                    .state
                    .nodes
                    .values()
                    .filter_map(|n| n.inventory.as_ref())
                    .map(node_links)
                    .collect();
                std::sync::Arc::new(policies::topology::Topology::build(&self.network, &links))
            })
            .clone()
    }

    /// The accounts/QOS configuration in force.
    pub fn accounts(&self) -> &AccountsConfig {
        &self.accounts
    }

    /// The configuration text in force (empty: the built-in default).
    pub fn accounts_toml(&self) -> &str {
        &self.state.accounts_toml
    }
}
