-- A sample table for the default SYNCER_SOURCES, created and filled by the application role (so the owner gets
-- its rights on it from 10-roles.sh's default privileges). Delete this file to start without it.
SET ROLE app;
CREATE TABLE public.docs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title text NOT NULL,
    body text NOT NULL
);
INSERT INTO public.docs (title, body) VALUES
    ('PostgreSQL', 'PostgreSQL is an open source object-relational database system.'),
    ('pgvector', 'pgvector adds a vector type and nearest-neighbour search to PostgreSQL.'),
    ('Embeddings', 'An embedding maps a text to a vector so that similar texts lie close together.'),
    ('HNSW', 'HNSW is a graph index for fast approximate nearest-neighbour search.'),
    ('Docker Compose', 'Compose runs multi-container applications described in a YAML file.');
RESET ROLE;
