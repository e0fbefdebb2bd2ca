//! Port ranges as written in config: `80`, `"80"` or `"8000-8999"`.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer};

/// An inclusive range of TCP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange {
        first: 1,
        last: 65535,
    };

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// Number of ports in the range.
    pub fn width(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |p: &str| -> Result<u16, String> {
            let n: u16 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{p}` is not a port number (1-65535)"))?;
            if n == 0 {
                return Err("port 0 is not allowed".into());
            }
            Ok(n)
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let p = parse(s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!("range `{s}` ends before it starts"));
        }
        Ok(PortRange { first, last })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => u16::try_from(n)
                .ok()
                .filter(|n| *n != 0)
                .map(|n| PortRange { first: n, last: n })
                .ok_or_else(|| de::Error::custom(format!("{n} is not a port number (1-65535)"))),
            Raw::Text(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_ranges() {
        assert_eq!(
            "80".parse::<PortRange>(),
            Ok(PortRange {
                first: 80,
                last: 80
            })
        );
        assert_eq!(
            "8000-8999".parse::<PortRange>(),
            Ok(PortRange {
                first: 8000,
                last: 8999
            })
        );
        assert!("0".parse::<PortRange>().is_err());
        assert!("90-80".parse::<PortRange>().is_err());
        assert!("http".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
    }

    #[test]
    fn contains_is_inclusive() {
        let r: PortRange = "10-20".parse().unwrap();
        assert!(r.contains(10) && r.contains(20) && !r.contains(21) && !r.contains(9));
        assert_eq!(r.width(), 11);
        assert_eq!(r.to_string(), "10-20");
    }
}
