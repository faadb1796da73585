-- Schema of the enrichment database (MariaDB 10.11 and MySQL 8.4).
-- Idempotent: run by `make up` (scripts/services.sh) on every start, and by the
-- mysql:8.4 container on its first start (docker-compose.yml mounts ./sql at
-- /docker-entrypoint-initdb.d, which runs schema.sql then seed.sql).
-- Must be run by an administrative account.

SET NAMES utf8mb4;

CREATE DATABASE IF NOT EXISTS reclamacoes_db
  DEFAULT CHARACTER SET utf8mb4
  DEFAULT COLLATE utf8mb4_unicode_ci;

-- Application account. Local development only: the password is not a secret.
-- Both hosts: '%' for TCP (127.0.0.1), 'localhost' for the socket and so that an
-- anonymous ''@'localhost' account, if any, never shadows it.
CREATE USER IF NOT EXISTS 'reclamacoes'@'%' IDENTIFIED BY 'reclamacoes';
CREATE USER IF NOT EXISTS 'reclamacoes'@'localhost' IDENTIFIED BY 'reclamacoes';
ALTER USER 'reclamacoes'@'%' IDENTIFIED BY 'reclamacoes';
ALTER USER 'reclamacoes'@'localhost' IDENTIFIED BY 'reclamacoes';
GRANT ALL PRIVILEGES ON reclamacoes_db.* TO 'reclamacoes'@'%';
GRANT ALL PRIVILEGES ON reclamacoes_db.* TO 'reclamacoes'@'localhost';
-- Scratch databases for tests that want isolation: reclamacoes_test, reclamacoes_test_<anything>.
GRANT ALL PRIVILEGES ON `reclamacoes\_test%`.* TO 'reclamacoes'@'%';
GRANT ALL PRIVILEGES ON `reclamacoes\_test%`.* TO 'reclamacoes'@'localhost';
-- `app consume --enrich-cdc` follows the dimension's changes in the binary log, as a replica
-- would: it reads the log (REPLICATION SLAVE) and asks where it ends (REPLICATION CLIENT, which
-- MariaDB 10.5+ calls BINLOG MONITOR).
GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'reclamacoes'@'%';
GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'reclamacoes'@'localhost';

-- Segment (S1..S5) and name of each institution, keyed by the 8-digit base CNPJ
-- (with leading zeros, as in the complaints CSV column "CNPJ IF").
CREATE TABLE IF NOT EXISTS reclamacoes_db.bancos (
  cnpj          CHAR(8)      NOT NULL,
  segmento      VARCHAR(4)   NOT NULL,
  nome          VARCHAR(255) NOT NULL,
  atualizado_em TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (cnpj)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
