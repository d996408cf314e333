//! The three placements a tenant can have, by name (where each keeps its data is
//! `borough_tenancy::placement`).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    Shared,
    Schema,
    Database,
}

impl Placement {
    pub const ALL: [Placement; 3] = [Placement::Shared, Placement::Schema, Placement::Database];

    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Shared => "shared",
            Placement::Schema => "schema",
            Placement::Database => "database",
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("placement {0:?} is not one of \"shared\", \"schema\", \"database\"")]
pub struct UnknownPlacement(pub String);

impl FromStr for Placement {
    type Err = UnknownPlacement;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Placement::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPlacement(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_parse_from_their_names_only() {
        for p in Placement::ALL {
            assert_eq!(p.as_str().parse::<Placement>(), Ok(p));
        }
        assert!("Shared".parse::<Placement>().is_err());
        assert!("rls".parse::<Placement>().is_err());
    }
}
