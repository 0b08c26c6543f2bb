//! The per-address connection cap: no one address (an IPv6 /64 counts as
//! one, see [`address_key`]) may hold more than `--max-connections-per-address`
//! connections, so a few hundred silent sockets from one place cannot take
//! `--max-connections` away from everybody else.
//!
//! Each admitted connection carries an [`AddressTicket`]; dropping the
//! connection drops the ticket, which gives its address's place back. The
//! count is therefore right whichever way a connection ends, with no
//! bookkeeping on the close path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use crate::rate_limit::address_key;

/// Connections per address, shared by the cap and its tickets.
type Counts = Rc<RefCell<HashMap<IpAddr, usize>>>;

/// Counts the connections of each address against a cap.
#[derive(Debug)]
pub struct AddressCap {
    /// Most connections per address; `None`: no cap (tickets still count).
    max_per_address: Option<usize>,
    counts: Counts,
}

/// One admitted connection's place in its address's count; given back on drop.
#[derive(Debug)]
pub struct AddressTicket {
    address: IpAddr,
    counts: Counts,
}

impl AddressCap {
    /// A cap of `max_per_address` connections per address (`None`: no cap).
    pub fn new(max_per_address: Option<usize>) -> Self {
        AddressCap {
            max_per_address,
            counts: Rc::default(),
        }
    }

    /// A ticket for one more connection from `ip`, or `None` if its address
    /// already holds the most it may.
    pub fn admit(&self, ip: IpAddr) -> Option<AddressTicket> {
        let address = address_key(ip);
        let mut counts = self.counts.borrow_mut();
        let count = counts.entry(address).or_insert(0);
        if self.max_per_address.is_some_and(|max| *count >= max) {
            if *count == 0 {
                counts.remove(&address);
            }
            return None;
        }
        *count += 1;
        Some(AddressTicket {
            address,
            counts: Rc::clone(&self.counts),
        })
    }

    /// Connections currently held by the address of `ip`.
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        let counts = self.counts.borrow();
        counts.get(&address_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for AddressTicket {
    /// Gives the place back; the address's entry goes with its last ticket,
    /// so the table holds only addresses with connections.
    fn drop(&mut self) {
        let mut counts = self.counts.borrow_mut();
        if let Some(count) = counts.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_cap_and_places_come_back_on_drop() {
        let cap = AddressCap::new(Some(2));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = cap.admit(ip).unwrap();
        let _second = cap.admit(ip).unwrap();
        assert!(cap.admit(ip).is_none(), "a third from one address");
        assert!(cap.admit("10.0.0.2".parse().unwrap()).is_some());
        drop(first);
        assert_eq!(cap.connections_from(ip), 1);
        assert!(cap.admit(ip).is_some());
    }

    #[test]
    fn one_ipv6_slash_64_is_one_address() {
        let cap = AddressCap::new(Some(1));
        let _held = cap.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(cap.admit("2001:db8::ffff:2".parse().unwrap()).is_none());
        assert!(cap.admit("2001:db8:0:1::1".parse().unwrap()).is_some());
    }

    #[test]
    fn without_a_cap_everyone_is_admitted_and_the_table_empties() {
        let cap = AddressCap::new(None);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let tickets: Vec<_> = (0..100).map(|_| cap.admit(ip).unwrap()).collect();
        assert_eq!(cap.connections_from(ip), 100);
        drop(tickets);
        assert!(cap.counts.borrow().is_empty());
    }
}
