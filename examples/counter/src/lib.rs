use sockets_plugin::connection::{Connection, ConnectionInfo, Output};

/// Numbers the lines of each connection: `hi` -> `1 hi`, `yo` -> `2 yo`.
struct Counter {
    pending: Vec<u8>,
    lines: u64,
}

impl Connection for Counter {
    fn new(_info: ConnectionInfo) -> Self {
        Counter { pending: Vec::new(), lines: 0 }
    }

    fn on_data(&mut self, data: Vec<u8>) -> Result<Output, String> {
        self.pending.extend_from_slice(&data); // bytes arrive split anywhere
        let mut reply = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            self.lines += 1;
            reply.extend(format!("{} ", self.lines).bytes().chain(self.pending.drain(..=end)));
        }
        if self.pending.len() > 4096 {
            return Err("line too long".into());
        }
        Ok(Output::reply(reply))
    }
}

sockets_plugin::export_connection!(Counter);
