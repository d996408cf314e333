//! Borough's gRPC contracts, generated at build time from `proto/` (nothing generated is
//! committed). Each package is a module named after it.

pub mod user {
    pub mod v1 {
        tonic::include_proto!("borough.user.v1");
    }
}

pub mod query {
    pub mod v1 {
        tonic::include_proto!("borough.query.v1");
    }
}
