//! The connection-manager service: listeners, XML streams, TLS, SASL, resource binding, limits; the edge of the cluster
