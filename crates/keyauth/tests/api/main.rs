//! Integration tests: the real server on port 0, spoken to over gRPC with the generated client,
//! each scenario against SQLite and (when KEYAUTH_TEST_DATABASE_URL is set) PostgreSQL.

mod helpers;
mod instances;

mod attack;
mod audit;
mod cache;
mod caller;
mod cli;
mod connections;
mod console;
mod exposed;
mod ext_authz;
mod hygiene;
mod issue;
mod list;
mod operable;
mod portal;
mod principals;
mod process;
mod races;
mod roll_revoke;
mod serving;
mod tls;
mod usage;
mod verify;
