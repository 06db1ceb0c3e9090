//! `bulwark acl lint`: findings about a rule set that is valid but probably not what its
//! author meant.
