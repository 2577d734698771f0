-- One row: a random id every node on this database shares. It names this deployment's
-- Redis channels, so that deployments sharing one Redis server never hear each other.
CREATE TABLE deployment (
    singleton  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    id         TEXT NOT NULL
);
INSERT INTO deployment (id) VALUES (replace(gen_random_uuid()::text, '-', ''));
