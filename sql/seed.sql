-- Fictional institutions for development and tests (names and CNPJs are made up;
-- '00000000' and '00360305' are there to exercise leading zeros).
-- The fixtures in fixtures/*.csv refer to these CNPJs; fixtures/bancos.tsv holds the
-- same rows in the Banco Central "enquadramento" format.
--
-- Idempotent (REPLACE). `make up` runs it only when reclamacoes_db.bancos is empty,
-- so a table loaded with `make load-bancos` is left alone; `make seed` empties the
-- table and runs this file again. The mysql container runs it on its first start.

SET NAMES utf8mb4;

REPLACE INTO reclamacoes_db.bancos (cnpj, segmento, nome) VALUES
  ('00000000', 'S1', 'BANCO AURORA S.A.'),
  ('00360305', 'S1', 'CAIXA ECONÔMICA FICTÍCIA'),
  ('00012345', 'S4', 'COOPERATIVA DE CRÉDITO VALE DO IPÊ'),
  ('00098765', 'S3', 'BANCO JACARANDÁ DE INVESTIMENTO S.A.'),
  ('01020304', 'S5', 'SOCIEDADE DE CRÉDITO AO MICROEMPREENDEDOR JOÃO-DE-BARRO LTDA.'),
  ('04040404', 'S3', 'BANCO PITANGA S.A.'),
  ('07070707', 'S2', 'BANCO DO SERTÃO IMAGINÁRIO S.A.'),
  ('09090909', 'S4', 'FINANCEIRA CORAÇÃO DE MARIA S.A. – CRÉDITO, FINANCIAMENTO E INVESTIMENTO'),
  ('11111111', 'S2', 'BANCO CARAMBOLA S.A.'),
  ('12345678', 'S3', 'BANCO ARAÇÁ MÚLTIPLO S.A.'),
  ('13131313', 'S4', 'PAGAMENTOS TUCANO INSTITUIÇÃO DE PAGAMENTO S.A.'),
  ('17171717', 'S5', 'COOPERATIVA DE ECONOMIA E CRÉDITO MÚTUO DOS SERVIDORES DE ITAPOÃ'),
  ('20202020', 'S3', 'BANCO SABIÁ S.A.'),
  ('21212121', 'S4', 'CRÉDITO CAJUÍNA S.A.'),
  ('23232323', 'S4', 'BANCO MARACUJÁ S.A.'),
  ('25252525', 'S5', 'COOPERATIVA DE CRÉDITO SERTÃO VERDE'),
  ('27272727', 'S2', 'BANCO GUARANÁ DIGITAL S.A.'),
  ('30303030', 'S3', 'BANCO D''ÁGUA DOCE S.A.'),
  ('31313131', 'S1', 'BANCO IPIRANGA FICTÍCIO S.A.'),
  ('33333333', 'S1', 'BANCO ESTRELA DO SUL S.A.'),
  ('35353535', 'S4', 'FINANCEIRA BEM-TE-VI S.A.'),
  ('40404040', 'S3', 'BANCO AÇAÍ S.A.'),
  ('42424242', 'S4', 'BANCO CAMBUCÁ DE CÂMBIO S.A.'),
  ('45454545', 'S5', 'COOPERATIVA DE CRÉDITO DO PLANALTO CENTRAL'),
  ('50505050', 'S2', 'BANCO PAINEIRA S.A.'),
  ('55555555', 'S3', 'BANCO TAMARINDO MÚLTIPLO S.A.'),
  ('60606060', 'S1', 'BANCO JEQUITIBÁ S.A.'),
  ('65656565', 'S4', 'PAGUE-FÁCIL ARAUCÁRIA INSTITUIÇÃO DE PAGAMENTO S.A.'),
  ('70707070', 'S4', 'BANCO URUCUM S.A.'),
  ('90909090', 'S3', 'BANCO MANDACARU S.A.');
