#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use sha2::Sha256;

use super::*;
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;

// Fixed test keys, generated once with openssl for these tests only.
const RSA1_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCiIMQoLk8lSXuH\n\
No1USAY75lMiFbD0AquqS4BoXMtFE6qVjc3+X2QOgOygOpYuIM16A/So6Eh/cZvO\n\
dvfdJOSJ9ZbSyNzDjz55rZX+HD0pzrzwMEEe0lghLVIny+CUmAWd0qgrTHrjSlwJ\n\
HdhcEI/kCub74IjKrzGT3d+wOWsyHzEvaopfl8Hmcc8qvwZ4Jyw7Srm/7I+BEvc6\n\
7nVXXFKw2ZnSEpJyVRD1/Zsvkpt6FLjzuTqtKSj1jUoXoo/ymG9O6SLk5AqtG8el\n\
zayNYDPB8GIGYst2iz91cL0Ckhs5yUSDhpmFMNogZsnLOH9pao4g1XamYSFQUzFt\n\
Om+t6GMZAgMBAAECggEABNtAqPf3JrWoabzWd7B3IFb2RUp7TBni4MVldarW620r\n\
AlMWuTCMD5uoyuVqX3wbz5R8AQ3BMzEY4tLBOrp6zo+g2pRJ+aEqNMygdjXMFrsi\n\
wXqejsDsAyVnhTnoEqdpnqhDYZWnRjTxZBQE6cAUwVbaw69+hXzBOk3OgCm+JmiI\n\
w8hAZ5MBcbl+3FIg/olb6KYv5YIPYzACJjFCm5SAEgQKymbx/yA4TGEFgGIg5Zpm\n\
S6F+HinHhkUUDRqPNGhd2z+zWDaFrNRP/I66zxmXQAoYHwcfdGIwhZaa1/POaXsR\n\
wBehfvJ5mzPJr6VnubZqhLlUcDBdb02i3VQcSbVOgQKBgQDiPtZ5KoU692cLaLJS\n\
pPFsMKQInqzyZlHR1kKqJHl3wrNeEuI3LOSRSQbNyktYYgFc6HvPCmGjJ5k3ssxK\n\
jxilLJBgJkfTfCZfiymhoy8ZFN4FIy6eWkDVYwOUxi5LWJKKYkP37j1Tlmaf/VOz\n\
zQnRXsFf2nU0HZIteuyLJn8jgQKBgQC3cz3L8+XxVHjMa9Zha6fLvow2wKg6Vv+h\n\
i2m4mrkKfj9tOerhalkmYnpQew4kG+7LWzjCOGYvGHMkQHjtMNPqMtXfGjyUH6pV\n\
haiClT8X41LstSOmVjhl9eqhnlpXwZfZIPdPq1SreCH8NDd0soMJQS1h9LcD4gpt\n\
bpEJJbWrmQKBgFaFn3HRAAiP6rljPab7a1RruZ+ORyegV7P+05nLvyQ8smnMoPRm\n\
17Z0DgUPUwcm28yTIB4Ko1JI54B0gUoWNV+djk0m9pr7RJWPW8lz5aQa5dljHgXz\n\
EA5LAmiX7cZkxg3kDIg5dPyNbQvMToFZbWLDcQJeQio/ENMRynpgq4iBAoGADe/o\n\
av1No+cKAmXS9LXMGrOQTXyXi08evrQrxQWkN0LeKLs0uAlvWnYy2rhum5mvq61z\n\
g3XrdXqDDOcFCOgjwXA5RWjl308EjtjHs5wJHhR8MVWVrsZwJHbpa3vvWylvEuTp\n\
RRk8JobK9jE1YV1KjUJxYzbHTLk4l5XF2Q8PXUkCgYBn+4mDmKD27AArah/YdmU7\n\
fdr1uGE4Trd7OwaSvgtQcYJhyAA3Myhn7Ot2FuNOX8Iq5+d33k6HDfWleez0GAOJ\n\
YG9jscIR5F2ohEyISZB+HP8m6I4qpwA46EKXRGXD5Y7zZ+aOXOfKYRJJ2ZlzfViF\n\
iodEDvtDWCaVfI4wbnqlRA==\n\
-----END PRIVATE KEY-----\n\
";

const RSA1_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAoiDEKC5PJUl7hzaNVEgG\n\
O+ZTIhWw9AKrqkuAaFzLRROqlY3N/l9kDoDsoDqWLiDNegP0qOhIf3Gbznb33STk\n\
ifWW0sjcw48+ea2V/hw9Kc688DBBHtJYIS1SJ8vglJgFndKoK0x640pcCR3YXBCP\n\
5Arm++CIyq8xk93fsDlrMh8xL2qKX5fB5nHPKr8GeCcsO0q5v+yPgRL3Ou51V1xS\n\
sNmZ0hKSclUQ9f2bL5KbehS487k6rSko9Y1KF6KP8phvTuki5OQKrRvHpc2sjWAz\n\
wfBiBmLLdos/dXC9ApIbOclEg4aZhTDaIGbJyzh/aWqOINV2pmEhUFMxbTpvrehj\n\
GQIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

const RSA1_PKCS1_PUBLIC: &str = "\
-----BEGIN RSA PUBLIC KEY-----\n\
MIIBCgKCAQEAoiDEKC5PJUl7hzaNVEgGO+ZTIhWw9AKrqkuAaFzLRROqlY3N/l9k\n\
DoDsoDqWLiDNegP0qOhIf3Gbznb33STkifWW0sjcw48+ea2V/hw9Kc688DBBHtJY\n\
IS1SJ8vglJgFndKoK0x640pcCR3YXBCP5Arm++CIyq8xk93fsDlrMh8xL2qKX5fB\n\
5nHPKr8GeCcsO0q5v+yPgRL3Ou51V1xSsNmZ0hKSclUQ9f2bL5KbehS487k6rSko\n\
9Y1KF6KP8phvTuki5OQKrRvHpc2sjWAzwfBiBmLLdos/dXC9ApIbOclEg4aZhTDa\n\
IGbJyzh/aWqOINV2pmEhUFMxbTpvrehjGQIDAQAB\n\
-----END RSA PUBLIC KEY-----\n\
";

const RSA1_CERTIFICATE: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIC/zCCAeegAwIBAgIUWDN0XV5bM1914SWpxeN7dtmZyCkwDQYJKoZIhvcNAQEL\n\
BQAwDzENMAsGA1UEAwwEdGVzdDAeFw0yNjEyMDIwMjAzMDJaFw0zNjExMjkwMjAz\n\
MDJaMA8xDTALBgNVBAMMBHRlc3QwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEK\n\
AoIBAQCiIMQoLk8lSXuHNo1USAY75lMiFbD0AquqS4BoXMtFE6qVjc3+X2QOgOyg\n\
OpYuIM16A/So6Eh/cZvOdvfdJOSJ9ZbSyNzDjz55rZX+HD0pzrzwMEEe0lghLVIn\n\
y+CUmAWd0qgrTHrjSlwJHdhcEI/kCub74IjKrzGT3d+wOWsyHzEvaopfl8Hmcc8q\n\
vwZ4Jyw7Srm/7I+BEvc67nVXXFKw2ZnSEpJyVRD1/Zsvkpt6FLjzuTqtKSj1jUoX\n\
oo/ymG9O6SLk5AqtG8elzayNYDPB8GIGYst2iz91cL0Ckhs5yUSDhpmFMNogZsnL\n\
OH9pao4g1XamYSFQUzFtOm+t6GMZAgMBAAGjUzBRMB0GA1UdDgQWBBT+N3Z0R+S9\n\
aXfC5UIRarnoJZzOJDAfBgNVHSMEGDAWgBT+N3Z0R+S9aXfC5UIRarnoJZzOJDAP\n\
BgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUAA4IBAQAJkDV/MByXoW5b1fT9\n\
GrTXFtlVWxpXN3EjxF4mp6OwMPjT/syFG9/d04SvQFIoUFG0iZMAF7m/iYLrf15O\n\
7GQpKbSltFXIjJG5g9HJtHCur6B6YFJ8R/VDm06KGnSeGuhYURRqEwGWEEkYLF/l\n\
O8jJsongM5T3SEkK2UoKYlQ85SDLP7J2qvh/gD9z/gWYkDaAMxVEUCWUgyLjEslL\n\
vA3JjS2npVUwfEL6+vQ6qqmJuWweiMvEOyaHTVONwEjvxOQ3FQVckUm6L3m6Rz2a\n\
ERCti6Nk8APx73Sqn4L1VAwZtFaaV9I6V6sfEYhV/xHPTb4rM18Ng4UEoDZ/AzIT\n\
xpSp\n\
-----END CERTIFICATE-----\n\
";

const RSA2_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDFM697s3DiW6Ic\n\
ONtE/JuT6X+JvbYfVmqixaFRfyI4G/VYT/LsxmEYkX1BHTnavZBaVi/6eC93XrLz\n\
vVStBFopH4UfXySCa+LM8lzyyTnp5pIOax52sFe6IYOS7qqixpu9kEe91liOLbrx\n\
vwXdV/2s5rQRnfISWWeGDJ8EiaP6dAbYF2oaFxms8D2dy4wSggG6/lOCcin6OD0Q\n\
ARYpq74WfiFI8eZ32gSAT+xf5rw33q1R0wKq4GxyEn6dOxFZ1D/NfnYkC6YDPem0\n\
75nC4eqLIyg1aqelYNmkbgWrlx/gY63rC4udmjXvHsljc3vee15CKIRbrW9E0pLb\n\
c0j8ijxvAgMBAAECggEACptWE/w51SMCnCv+tz4zDAiiIIGAuzzFrY2duKly6Luw\n\
PZjHQy8EZ/LjXs44n2hUzFcYa4ttWilQzMVhOZEjXFTiryZJ623sHAPpNfHW2Jrb\n\
PkVKtS2U+mD1F8EYknrGQ7Lv+Oj/iF4zUO9qXFZwQY2DH/Nz4sLGS7KAFxlkJYNh\n\
8xKU8wvzmfCR3TT239cN6qUJ+4M+UQsTXhITY8IVxadfn6gnUvqiX2MM6vZSDC4c\n\
9mhviQdlop1CJTpARXd38d+1B8Ko1SYnzvowrNFKDkKm3aIH7sauWZVwfiLZc0jt\n\
dCyUwtVEbvZQaQLGclnW01OcHxDHDEopF41vYFYjuQKBgQDiQZI8JaOlreJc8gtU\n\
8pFOeEG7g6WD2JAZhMIKVPC/7maUeDY73ck3CXm9iwgEQ0Pw/BHUaFnQglxS+XLE\n\
CEF668UWmFKGFdWIroXdhMvw1LaS3Wq9C0Rh4ZNpDByuR4sbG92enjTs5ME5wB/0\n\
Izlz7YOZA6vuNKHHqJCI8kYYewKBgQDfIFJ8fRBrXKd96xduVVL6dEUCRuYUbTrh\n\
4ZBspqb7j6S2EEub2XgxnH9ylsJSY/+HEEwKyRpscHtcxWDr80DkTZigcBNtEW4e\n\
kHi4nFrCenU3a4sF7DRaHHzGoWoPi3SpY1R+bwRQEYA/lSawGfBF5cnHouOAjMxm\n\
Rag4ZRTbnQKBgC+5pR8K0XohM55nb/x7LitfMn5bRo6JH9xCJKwJPr89imXG9amr\n\
HsZ9OTDCIu7DQZGTmi8z074nwVG/THYNR8Kl+OzLNJ0T/fbW2WXgnSQvulNAYUN/\n\
HO2Ip4+A/ovEi5MsTZMnzAIsPpXv8M2OoI/Tie6814dnkriK1fINKLwBAoGAUa+q\n\
oyrCLRwRsba0sE8Kfui8LvY323iV2wZScoSck3JmMcVLePYn27nYquHoqHM1pIPh\n\
4vz28IZJk5ArSJaYxjxmSS5e3kpIT2ZC3AtZ6uMcMLrtfbCZBfhx8eI8Sw6aGj1k\n\
PJl2Mb4GfsCjFkuYvG5A7haDRZfGaRbNXEAdX70CgYBIzfRdPBDsVbQ2ASVNfjoR\n\
CFiLPCFddiqwN6tNXnG7FT6Ijs+7SmmFWvXzPV0F36Ha6mz7jhz9XfhgiYP5mvp/\n\
lcoVvHUVKue3m4R0yY4LTkvtPOKR30CUUVfSDO6A7wk4EmBiXwMafmRGXbkulLko\n\
Dm8HK5Nt29MBV0Gn4weZkA==\n\
-----END PRIVATE KEY-----\n\
";

const RSA2_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxTOve7Nw4luiHDjbRPyb\n\
k+l/ib22H1ZqosWhUX8iOBv1WE/y7MZhGJF9QR052r2QWlYv+ngvd16y871UrQRa\n\
KR+FH18kgmvizPJc8sk56eaSDmsedrBXuiGDku6qosabvZBHvdZYji268b8F3Vf9\n\
rOa0EZ3yEllnhgyfBImj+nQG2BdqGhcZrPA9ncuMEoIBuv5TgnIp+jg9EAEWKau+\n\
Fn4hSPHmd9oEgE/sX+a8N96tUdMCquBschJ+nTsRWdQ/zX52JAumAz3ptO+ZwuHq\n\
iyMoNWqnpWDZpG4Fq5cf4GOt6wuLnZo17x7JY3N73nteQiiEW61vRNKS23NI/Io8\n\
bwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

const RSA1024_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDSryN1uKKNE4tITZ62T1Jjn4r4\n\
PD9I7St2n13Lqp1vYp2sqq6/2azhlSrKcaxljWVej1YyQoKsCXGb4YuifWbpMBuE\n\
v98cJL/rPvKE9lqHuitSMiw+WLrrLtxESS3U08Aw+VUgwEVFAhb12eYBJkZqMXR5\n\
4bVapd8JmZaRcH2qLQIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

const P256_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgWw4/hYG3QJxHz6l3\n\
Mrb/T5LGZtvDeVdXcdOb5nAQuaahRANCAAR6jmXLefMyQ1hJEc9wTJThNEYtbRdL\n\
yFpH0RJmDc41VxfxUQMFQZt0Ep4+jFXpDfk7RUb5XeqHsH0Cz+oeLRBi\n\
-----END PRIVATE KEY-----\n\
";

const P256_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeo5ly3nzMkNYSRHPcEyU4TRGLW0X\n\
S8haR9ESZg3ONVcX8VEDBUGbdBKePoxV6Q35O0VG+V3qh7B9As/qHi0QYg==\n\
-----END PUBLIC KEY-----\n\
";

const P256_CERTIFICATE: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBczCCARmgAwIBAgIUK3bm+ucfbU4MIJVoj4nss8q7cm8wCgYIKoZIzj0EAwIw\n\
DzENMAsGA1UEAwwEdGVzdDAeFw0yNjEyMDIwMjAzMDJaFw0zNjExMjkwMjAzMDJa\n\
MA8xDTALBgNVBAMMBHRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAR6jmXL\n\
efMyQ1hJEc9wTJThNEYtbRdLyFpH0RJmDc41VxfxUQMFQZt0Ep4+jFXpDfk7RUb5\n\
XeqHsH0Cz+oeLRBio1MwUTAdBgNVHQ4EFgQUX5yl/b+OYn0BVRZbahtWO3aFhB8w\n\
HwYDVR0jBBgwFoAUX5yl/b+OYn0BVRZbahtWO3aFhB8wDwYDVR0TAQH/BAUwAwEB\n\
/zAKBggqhkjOPQQDAgNIADBFAiEA5TuN4+byRbDSgRpmjhJCy/G6cBfAMRzySeP0\n\
UxKQi/cCIFE1TWqreRWnCuhZIDds75SLf67GRnQGkrphmHWyF39O\n\
-----END CERTIFICATE-----\n\
";

const P384_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDAGwVD1YgxbtNhM9/Xv\n\
g0QzjckZImsQs8JgqaYulgAqgEofGHFYZKfd45p1WGcw4TGhZANiAAR7jmaPHIgh\n\
CoNHrxkNaHvQsQR9xibyk4VXch0dx1vUPHBSbHmawbt2teVsipt7V0z1eNJAICI4\n\
FW7NAGkycBAYoJagpwJIwDccxTM6O9LqQbapY67mS69bJJ9u9Rv2IBk=\n\
-----END PRIVATE KEY-----\n\
";

const P384_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEe45mjxyIIQqDR68ZDWh70LEEfcYm8pOF\n\
V3IdHcdb1DxwUmx5msG7drXlbIqbe1dM9XjSQCAiOBVuzQBpMnAQGKCWoKcCSMA3\n\
HMUzOjvS6kG2qWOu5kuvWySfbvUb9iAZ\n\
-----END PUBLIC KEY-----\n\
";

const ED25519_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIAW/U2Fz08dcjvj5Gvsu+jEV+Z+jb5W258+IrvQqMJYt\n\
-----END PRIVATE KEY-----\n\
";

const ED25519_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEAOCE7BTS+iHy0WjYHvaLvvMafEf4P/2EbLHx8T0TFN+k=\n\
-----END PUBLIC KEY-----\n\
";

const ED448_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MEMwBQYDK2VxAzoAixNF3WMT8Mhb5UkMhnAfhCvGjk3zsbJwWRXSnktsVBfKmiEu\n\
JcF4KuX5kEj1ilCW+94/vlMfQJcA\n\
-----END PUBLIC KEY-----\n\
";

// The moduli of RSA1 and RSA2 and the public parts of P256 and ED25519, as JWK members.
const RSA1_N: &str = "oiDEKC5PJUl7hzaNVEgGO-ZTIhWw9AKrqkuAaFzLRROqlY3N_l9kDoDsoDqWLiDNegP0qOhIf3Gbznb33STkifWW0sjcw48-ea2V_hw9Kc688DBBHtJYIS1SJ8vglJgFndKoK0x640pcCR3YXBCP5Arm--CIyq8xk93fsDlrMh8xL2qKX5fB5nHPKr8GeCcsO0q5v-yPgRL3Ou51V1xSsNmZ0hKSclUQ9f2bL5KbehS487k6rSko9Y1KF6KP8phvTuki5OQKrRvHpc2sjWAzwfBiBmLLdos_dXC9ApIbOclEg4aZhTDaIGbJyzh_aWqOINV2pmEhUFMxbTpvrehjGQ";
const RSA2_N: &str = "xTOve7Nw4luiHDjbRPybk-l_ib22H1ZqosWhUX8iOBv1WE_y7MZhGJF9QR052r2QWlYv-ngvd16y871UrQRaKR-FH18kgmvizPJc8sk56eaSDmsedrBXuiGDku6qosabvZBHvdZYji268b8F3Vf9rOa0EZ3yEllnhgyfBImj-nQG2BdqGhcZrPA9ncuMEoIBuv5TgnIp-jg9EAEWKau-Fn4hSPHmd9oEgE_sX-a8N96tUdMCquBschJ-nTsRWdQ_zX52JAumAz3ptO-ZwuHqiyMoNWqnpWDZpG4Fq5cf4GOt6wuLnZo17x7JY3N73nteQiiEW61vRNKS23NI_Io8bw";
const P256_X: &str = "eo5ly3nzMkNYSRHPcEyU4TRGLW0XS8haR9ESZg3ONVc";
const P256_Y: &str = "F_FRAwVBm3QSnj6MVekN-TtFRvld6oewfQLP6h4tEGI";
const ED25519_X: &str = "OCE7BTS-iHy0WjYHvaLvvMafEf4P_2EbLHx8T0TFN-k";

const NOW: u64 = 1_700_000_000;
const SECRET_32: &[u8] = b"0123456789abcdef0123456789abcdef";
const SECRET_64: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const CLIENT: &str = "sensor-7";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sign(algorithm: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    // Whichever provider the process already has signs as well as this one.
    let _ = DEFAULT_PROVIDER.install_default();
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// An HS256 token over exactly these header and payload bytes.
fn hand_hs256(secret: &[u8], header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

/// `{"sub": "alice", "exp": NOW + 600}` with `extra` merged in (a null removes a member).
fn claims(extra: Value) -> Value {
    let mut claims = json!({"sub": "alice", "exp": NOW + 600});
    let object = claims.as_object_mut().unwrap();
    for (name, value) in extra.as_object().unwrap() {
        if value.is_null() {
            object.remove(name);
        } else {
            object.insert(name.clone(), value.clone());
        }
    }
    claims
}

fn hs_keys() -> JwtKeySet {
    let mut keys = JwtKeySet::new();
    keys.add_hmac_secret(SECRET_32, Some("hs".to_owned()))
        .unwrap();
    keys
}

fn hs_token(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET_32).unwrap(),
        Some("hs"),
        claims,
    )
}

/// Verifies an HS256 token with these claims under `settings` at `NOW`.
fn check(settings: &JwtSettings, claims: &Value) -> Result<JwtIdentity, JwtError> {
    verify(settings, &hs_keys(), &hs_token(claims), CLIENT, NOW)
}

fn pem_keys(pem: &str, kid: &str) -> JwtKeySet {
    let mut keys = JwtKeySet::new();
    keys.add_pem(pem.as_bytes(), Some(kid.to_owned())).unwrap();
    keys
}

fn rsa_jwk(kid: &str, n: &str) -> Value {
    json!({"kty": "RSA", "kid": kid, "use": "sig", "n": n, "e": "AQAB"})
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A deterministic byte stream for the never-panics tests.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn hs256_and_hs512_verify() {
    let settings = JwtSettings::default();
    let identity = check(&settings, &claims(json!({}))).unwrap();
    assert_eq!(
        identity,
        JwtIdentity {
            username: "alice".to_owned(),
            client_id: None,
            expires_at: Some(NOW + 600),
            acl: None,
            algorithm: "HS256".to_owned(),
            kid: Some("hs".to_owned()),
        }
    );

    let mut keys = JwtKeySet::new();
    keys.add_hmac_secret(SECRET_64, None).unwrap();
    let token = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET_64).unwrap(),
        None,
        &claims(json!({})),
    );
    let identity = verify(&settings, &keys, &token, CLIENT, NOW).unwrap();
    assert_eq!(identity.algorithm, "HS512");
    assert_eq!(identity.kid, None);
}

#[test]
fn hs512_needs_a_secret_as_long_as_its_hash() {
    let token = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET_32).unwrap(),
        Some("hs"),
        &claims(json!({})),
    );
    assert_eq!(
        verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW),
        Err(JwtError::AlgorithmMismatch)
    );
}

#[test]
fn rsa_pkcs1_and_pss_verify() {
    let keys = pem_keys(RSA1_PUBLIC, "rsa");
    let signing = EncodingKey::from_rsa_pem(RSA1_PRIVATE.as_bytes()).unwrap();
    for (algorithm, name) in [(Algorithm::RS256, "RS256"), (Algorithm::PS256, "PS256")] {
        let token = sign(algorithm, &signing, Some("rsa"), &claims(json!({})));
        let identity = verify(&JwtSettings::default(), &keys, &token, CLIENT, NOW).unwrap();
        assert_eq!(identity.algorithm, name);
        assert_eq!(identity.kid.as_deref(), Some("rsa"));
        assert_eq!(identity.username, "alice");
    }
}

#[test]
fn ecdsa_p256_and_p384_verify_and_stay_on_their_curve() {
    let p256 = EncodingKey::from_ec_pem(P256_PRIVATE.as_bytes()).unwrap();
    let p384 = EncodingKey::from_ec_pem(P384_PRIVATE.as_bytes()).unwrap();
    let es256 = sign(Algorithm::ES256, &p256, None, &claims(json!({})));
    let es384 = sign(Algorithm::ES384, &p384, None, &claims(json!({})));

    let keys = pem_keys(P256_PUBLIC, "p256");
    let identity = verify(&JwtSettings::default(), &keys, &es256, CLIENT, NOW).unwrap();
    assert_eq!(
        (identity.algorithm.as_str(), identity.kid.as_deref()),
        ("ES256", Some("p256"))
    );
    assert_eq!(
        verify(&JwtSettings::default(), &keys, &es384, CLIENT, NOW),
        Err(JwtError::AlgorithmMismatch)
    );

    let keys = pem_keys(P384_PUBLIC, "p384");
    let identity = verify(&JwtSettings::default(), &keys, &es384, CLIENT, NOW).unwrap();
    assert_eq!(identity.algorithm, "ES384");
    assert_eq!(
        verify(&JwtSettings::default(), &keys, &es256, CLIENT, NOW),
        Err(JwtError::AlgorithmMismatch)
    );
}

#[test]
fn eddsa_verifies() {
    let keys = pem_keys(ED25519_PUBLIC, "ed");
    let signing = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();
    let token = sign(Algorithm::EdDSA, &signing, None, &claims(json!({})));
    let identity = verify(&JwtSettings::default(), &keys, &token, CLIENT, NOW).unwrap();
    assert_eq!(identity.algorithm, "EdDSA");
    assert_eq!(identity.kid.as_deref(), Some("ed"));
}

#[test]
fn a_changed_payload_or_another_key_is_a_bad_signature() {
    let token = hs_token(&claims(json!({})));
    let forged = hs_token(&claims(json!({"sub": "root"})));
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = forged.split('.').nth(1).unwrap();
    let tampered = parts.join(".");
    assert_eq!(
        verify(&JwtSettings::default(), &hs_keys(), &tampered, CLIENT, NOW),
        Err(JwtError::BadSignature)
    );

    let other = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret of thirty-two bytes!!").unwrap(),
        Some("hs"),
        &claims(json!({})),
    );
    assert_eq!(
        verify(&JwtSettings::default(), &hs_keys(), &other, CLIENT, NOW),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn expiry_honours_the_clock_skew() {
    let settings = JwtSettings::default();
    assert_eq!(
        check(&settings, &claims(json!({"exp": NOW - 100}))),
        Err(JwtError::Expired)
    );
    let identity = check(&settings, &claims(json!({"exp": NOW - 10}))).unwrap();
    assert_eq!(identity.expires_at, Some(NOW - 10));

    let strict = JwtSettings {
        clock_skew_secs: 0,
        ..JwtSettings::default()
    };
    assert_eq!(
        check(&strict, &claims(json!({"exp": NOW}))),
        Err(JwtError::Expired)
    );
    assert!(check(&strict, &claims(json!({"exp": NOW + 1}))).is_ok());
    // Fractional NumericDates round down.
    assert!(check(&strict, &claims(json!({"exp": NOW as f64 + 1.5}))).is_ok());
    assert_eq!(
        check(&strict, &claims(json!({"exp": NOW as f64 + 0.5}))),
        Err(JwtError::Expired)
    );
}

#[test]
fn not_before_in_the_future_is_refused() {
    let settings = JwtSettings::default();
    assert_eq!(
        check(&settings, &claims(json!({"nbf": NOW + 100}))),
        Err(JwtError::NotYetValid)
    );
    assert!(check(&settings, &claims(json!({"nbf": NOW + 10}))).is_ok());
    assert!(check(&settings, &claims(json!({"nbf": NOW - 10}))).is_ok());
}

#[test]
fn missing_exp_is_refused_unless_allowed() {
    let no_exp = claims(json!({"exp": null}));
    assert_eq!(
        check(&JwtSettings::default(), &no_exp),
        Err(JwtError::MissingExp)
    );
    let lenient = JwtSettings {
        require_exp: false,
        ..JwtSettings::default()
    };
    assert_eq!(check(&lenient, &no_exp).unwrap().expires_at, None);
}

#[test]
fn time_claims_of_the_wrong_type_are_malformed() {
    let settings = JwtSettings::default();
    for bad in [json!("soon"), json!(-5), json!(true), json!([1])] {
        assert!(matches!(
            check(&settings, &claims(json!({"exp": bad.clone()}))),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            check(&settings, &claims(json!({"nbf": bad}))),
            Err(JwtError::Malformed(_))
        ));
    }
}

#[test]
fn issuer_must_match_when_configured() {
    let settings = JwtSettings {
        issuer: Some("https://idp.example".to_owned()),
        ..JwtSettings::default()
    };
    assert!(check(&settings, &claims(json!({"iss": "https://idp.example"}))).is_ok());
    assert_eq!(
        check(&settings, &claims(json!({"iss": "https://evil.example"}))),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(
        check(&settings, &claims(json!({}))),
        Err(JwtError::MissingClaim("iss".to_owned()))
    );
    // Not configured: any issuer is fine.
    assert!(check(&JwtSettings::default(), &claims(json!({"iss": "anyone"}))).is_ok());
}

#[test]
fn audience_string_or_array_must_name_a_configured_one() {
    let settings = JwtSettings {
        audiences: vec!["broker".to_owned(), "mqtt".to_owned()],
        ..JwtSettings::default()
    };
    assert!(check(&settings, &claims(json!({"aud": "mqtt"}))).is_ok());
    assert!(check(&settings, &claims(json!({"aud": ["web", "broker"]}))).is_ok());
    assert_eq!(
        check(&settings, &claims(json!({"aud": "web"}))),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(
        check(&settings, &claims(json!({"aud": ["web", "api"]}))),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(
        check(&settings, &claims(json!({"aud": []}))),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(
        check(&settings, &claims(json!({}))),
        Err(JwtError::MissingClaim("aud".to_owned()))
    );
    assert!(matches!(
        check(&settings, &claims(json!({"aud": ["broker", 7]}))),
        Err(JwtError::Malformed(_))
    ));
    // Not configured: aud is not looked at.
    assert!(check(&JwtSettings::default(), &claims(json!({"aud": "web"}))).is_ok());
}

#[test]
fn username_claim_must_be_a_non_empty_string() {
    let settings = JwtSettings::default();
    assert_eq!(
        check(&settings, &claims(json!({"sub": null}))),
        Err(JwtError::MissingClaim("sub".to_owned()))
    );
    for bad in [
        json!(""),
        json!(42),
        json!({"name": "alice"}),
        json!("a\u{0}b"),
    ] {
        assert!(matches!(
            check(&settings, &claims(json!({"sub": bad}))),
            Err(JwtError::Malformed(_))
        ));
    }
    let custom = JwtSettings {
        username_claim: "preferred_username".to_owned(),
        ..JwtSettings::default()
    };
    let identity = check(&custom, &claims(json!({"preferred_username": "bob"}))).unwrap();
    assert_eq!(identity.username, "bob");
    assert_eq!(
        check(&custom, &claims(json!({}))),
        Err(JwtError::MissingClaim("preferred_username".to_owned()))
    );
}

#[test]
fn client_id_claim_must_match_the_connect_client_id() {
    let settings = JwtSettings {
        client_id_claim: Some("cid".to_owned()),
        ..JwtSettings::default()
    };
    let identity = check(&settings, &claims(json!({"cid": CLIENT}))).unwrap();
    assert_eq!(identity.client_id.as_deref(), Some(CLIENT));
    assert_eq!(
        check(&settings, &claims(json!({"cid": "sensor-8"}))),
        Err(JwtError::ClientIdMismatch)
    );
    assert_eq!(
        check(&settings, &claims(json!({}))),
        Err(JwtError::MissingClaim("cid".to_owned()))
    );
    assert!(matches!(
        check(&settings, &claims(json!({"cid": 7}))),
        Err(JwtError::Malformed(_))
    ));
    // Without the setting, no client id is read or reported.
    let identity = check(&JwtSettings::default(), &claims(json!({"cid": "x"}))).unwrap();
    assert_eq!(identity.client_id, None);
}

#[test]
fn acl_claim_is_carried_through() {
    let acl = json!({"publish": ["sensors/7/#"], "subscribe": ["cmd/7"]});
    let settings = JwtSettings {
        acl_claim: Some("acl".to_owned()),
        ..JwtSettings::default()
    };
    let identity = check(&settings, &claims(json!({"acl": acl.clone()}))).unwrap();
    assert_eq!(identity.acl, Some(acl.clone()));
    assert_eq!(check(&settings, &claims(json!({}))).unwrap().acl, None);
    let identity = check(&JwtSettings::default(), &claims(json!({"acl": acl}))).unwrap();
    assert_eq!(identity.acl, None);
}

#[test]
fn unknown_kid_and_missing_family_are_unknown_keys() {
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET_32).unwrap(),
        Some("nope"),
        &claims(json!({})),
    );
    assert_eq!(
        verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW),
        Err(JwtError::UnknownKey {
            kid: Some("nope".to_owned())
        })
    );
    assert_eq!(
        verify(
            &JwtSettings::default(),
            &JwtKeySet::new(),
            &token,
            CLIENT,
            NOW
        ),
        Err(JwtError::UnknownKey {
            kid: Some("nope".to_owned())
        })
    );
    let signing = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();
    let eddsa = sign(Algorithm::EdDSA, &signing, None, &claims(json!({})));
    assert_eq!(
        verify(&JwtSettings::default(), &hs_keys(), &eddsa, CLIENT, NOW),
        Err(JwtError::UnknownKey { kid: None })
    );
    // A huge kid is shortened before it goes into the error.
    let long_kid = "k".repeat(5000);
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET_32).unwrap(),
        Some(&long_kid),
        &claims(json!({})),
    );
    match verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW) {
        Err(JwtError::UnknownKey { kid: Some(kid) }) => assert_eq!(kid.len(), MAX_KID_BYTES),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn alg_none_in_any_case_is_refused() {
    let payload = claims(json!({})).to_string();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT"}).to_string();
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        for token in [format!("{input}."), format!("{input}.{}", b64(b"sig"))] {
            assert_eq!(
                verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW),
                Err(JwtError::UnsupportedAlgorithm(alg.to_owned())),
                "{alg}"
            );
        }
    }
    for alg in ["hs256", "ES512", "RSA-OAEP", "Ed25519", ""] {
        let token = hand_hs256(
            SECRET_32,
            json!({"alg": alg}).to_string().as_bytes(),
            payload.as_bytes(),
        );
        assert_eq!(
            verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW),
            Err(JwtError::UnsupportedAlgorithm(alg.to_owned()))
        );
    }
    let huge = "X".repeat(1000);
    let token = hand_hs256(
        SECRET_32,
        json!({"alg": huge}).to_string().as_bytes(),
        payload.as_bytes(),
    );
    match verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW) {
        Err(JwtError::UnsupportedAlgorithm(alg)) => assert_eq!(alg.len(), MAX_ALG_IN_ERROR),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn hmac_keyed_with_the_rsa_public_key_is_refused() {
    // The classic confusion attack: the attacker knows the public key and uses its PEM bytes
    // as an HMAC secret.
    let payload = claims(json!({"sub": "root"})).to_string();
    let pem = RSA1_PUBLIC.as_bytes();
    let with_kid = hand_hs256(pem, br#"{"alg":"HS256","kid":"rsa"}"#, payload.as_bytes());
    let without_kid = hand_hs256(pem, br#"{"alg":"HS256"}"#, payload.as_bytes());
    let settings = JwtSettings::default();

    let rsa_only = pem_keys(RSA1_PUBLIC, "rsa");
    assert_eq!(
        verify(&settings, &rsa_only, &with_kid, CLIENT, NOW),
        Err(JwtError::AlgorithmMismatch)
    );
    assert_eq!(
        verify(&settings, &rsa_only, &without_kid, CLIENT, NOW),
        Err(JwtError::UnknownKey { kid: None })
    );

    // With an HMAC secret beside the RSA key, the forged MAC still fails.
    let mut mixed = rsa_only.clone();
    mixed.add_hmac_secret(SECRET_32, None).unwrap();
    assert_eq!(
        verify(&settings, &mixed, &without_kid, CLIENT, NOW),
        Err(JwtError::BadSignature)
    );
    assert_eq!(
        verify(&settings, &mixed, &with_kid, CLIENT, NOW),
        Err(JwtError::AlgorithmMismatch)
    );

    // And the public key cannot be configured as a secret in the first place.
    let mut keys = JwtKeySet::new();
    assert!(matches!(
        keys.add_hmac_secret(pem, None),
        Err(JwtError::InvalidKey(_))
    ));
    assert!(keys.is_empty());
}

#[test]
fn jwks_rotation_selects_by_kid() {
    let old_signing = EncodingKey::from_rsa_pem(RSA1_PRIVATE.as_bytes()).unwrap();
    let new_signing = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
    let old_token = sign(
        Algorithm::RS256,
        &old_signing,
        Some("old"),
        &claims(json!({})),
    );
    let new_token = sign(
        Algorithm::RS256,
        &new_signing,
        Some("new"),
        &claims(json!({})),
    );
    let mislabelled = sign(
        Algorithm::RS256,
        &old_signing,
        Some("new"),
        &claims(json!({})),
    );
    let settings = JwtSettings::default();

    let both = JwtKeySet::from_jwks_json(&jwks(&[rsa_jwk("old", RSA1_N), rsa_jwk("new", RSA2_N)]))
        .unwrap();
    assert_eq!(both.len(), 2);
    assert!(both.contains_kid("old") && both.contains_kid("new"));
    assert_eq!(
        verify(&settings, &both, &old_token, CLIENT, NOW)
            .unwrap()
            .kid
            .as_deref(),
        Some("old")
    );
    assert_eq!(
        verify(&settings, &both, &new_token, CLIENT, NOW)
            .unwrap()
            .kid
            .as_deref(),
        Some("new")
    );
    assert_eq!(
        verify(&settings, &both, &mislabelled, CLIENT, NOW),
        Err(JwtError::BadSignature)
    );

    let rotated = JwtKeySet::from_jwks_json(&jwks(&[rsa_jwk("new", RSA2_N)])).unwrap();
    assert_eq!(
        verify(&settings, &rotated, &new_token, CLIENT, NOW)
            .unwrap()
            .kid
            .as_deref(),
        Some("new")
    );
    assert_eq!(
        verify(&settings, &rotated, &old_token, CLIENT, NOW),
        Err(JwtError::UnknownKey {
            kid: Some("old".to_owned())
        })
    );
}

#[test]
fn jwks_skips_encryption_secret_and_unsupported_keys() {
    let document = jwks(&[
        json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA1_N, "e": "AQAB"}),
        json!({"kty": "RSA", "kid": "wrap", "key_ops": ["wrapKey"], "n": RSA1_N, "e": "AQAB"}),
        json!({"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": RSA1_N, "e": "AQAB"}),
        json!({"kty": "oct", "kid": "shared", "k": b64(SECRET_32)}),
        json!({"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"}),
        json!({"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": ED25519_X}),
        json!({"kty": "PQ", "kid": "future"}),
        rsa_jwk("sig", RSA2_N),
    ]);
    let keys = JwtKeySet::from_jwks_json(&document).unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys.contains_kid("sig"));
    for skipped in ["enc", "wrap", "oaep", "shared", "p521", "x25519", "future"] {
        assert!(!keys.contains_kid(skipped), "{skipped}");
    }

    let only_enc =
        jwks(&[json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA1_N, "e": "AQAB"})]);
    assert!(matches!(
        JwtKeySet::from_jwks_json(&only_enc),
        Err(JwtError::InvalidKey(_))
    ));
    assert!(matches!(
        JwtKeySet::from_jwks_json(r#"{"keys": []}"#),
        Err(JwtError::InvalidKey(_))
    ));
}

#[test]
fn jwks_ec_and_okp_keys_verify() {
    let document = jwks(&[
        json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": P256_X, "y": P256_Y}),
        json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": ED25519_X, "alg": "EdDSA"}),
    ]);
    let keys = JwtKeySet::from_jwks_json(&document).unwrap();
    let es256 = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(P256_PRIVATE.as_bytes()).unwrap(),
        Some("ec"),
        &claims(json!({})),
    );
    let eddsa = sign(
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap(),
        Some("ed"),
        &claims(json!({})),
    );
    assert_eq!(
        verify(&JwtSettings::default(), &keys, &es256, CLIENT, NOW)
            .unwrap()
            .algorithm,
        "ES256"
    );
    assert_eq!(
        verify(&JwtSettings::default(), &keys, &eddsa, CLIENT, NOW)
            .unwrap()
            .algorithm,
        "EdDSA"
    );
}

#[test]
fn jwks_alg_restricts_a_key() {
    let mut restricted = rsa_jwk("rsa", RSA1_N);
    restricted["alg"] = json!("RS256");
    let keys = JwtKeySet::from_jwks_json(&jwks(&[restricted])).unwrap();
    let signing = EncodingKey::from_rsa_pem(RSA1_PRIVATE.as_bytes()).unwrap();
    let ps256 = sign(Algorithm::PS256, &signing, Some("rsa"), &claims(json!({})));
    assert_eq!(
        verify(&JwtSettings::default(), &keys, &ps256, CLIENT, NOW),
        Err(JwtError::AlgorithmMismatch)
    );
    let ps256_no_kid = sign(Algorithm::PS256, &signing, None, &claims(json!({})));
    assert_eq!(
        verify(&JwtSettings::default(), &keys, &ps256_no_kid, CLIENT, NOW),
        Err(JwtError::AlgorithmMismatch)
    );
}

#[test]
fn jwks_errors_are_clear() {
    let refused = |document: &str| match JwtKeySet::from_jwks_json(document) {
        Err(JwtError::InvalidKey(reason)) => reason,
        other => panic!("unexpected {other:?}"),
    };
    assert!(refused("{not json").contains("not valid JSON"));
    assert!(refused(r#"{"kids": []}"#).contains("\"keys\""));
    assert!(refused(r#"{"keys": {}}"#).contains("\"keys\""));
    let mut wrong_alg = rsa_jwk("rsa", RSA1_N);
    wrong_alg["alg"] = json!("ES256");
    assert!(refused(&jwks(&[wrong_alg])).contains("does not fit"));
    let mut private = rsa_jwk("rsa", RSA1_N);
    private["d"] = json!("AQAB");
    assert!(refused(&jwks(&[private])).contains("private"));
    assert!(refused(&jwks(&[rsa_jwk("rsa", "!!!")])).contains("base64url"));
    assert!(refused(&jwks(&[rsa_jwk("rsa", "AQAB")])).contains("bits"));
    assert!(refused(&jwks(&[json!({"kty": "RSA", "n": RSA1_N})])).contains("\"e\""));
    assert!(refused(&jwks(&[json!("RSA")])).contains("not a JSON object"));
    let short = json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"});
    assert!(refused(&jwks(&[short])).contains("32"));
    let off_curve = json!({"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_X});
    assert!(refused(&jwks(&[off_curve])).contains("EC key"));
    let error = JwtKeySet::from_jwks_json(&"x".repeat(MAX_JWKS_BYTES + 1)).unwrap_err();
    assert!(error.to_string().contains("larger"));
}

#[test]
fn jwk_members_are_checked_by_name() {
    let refused = |key: Value| match JwtKeySet::from_jwks_json(&jwks(&[key])) {
        Err(JwtError::InvalidKey(reason)) => reason,
        other => panic!("unexpected {other:?}"),
    };
    // Members of the wrong JSON type are named, for the common and the key members alike.
    assert!(refused(json!({"kty": "RSA", "n": 5, "e": "AQAB"})).contains("\"n\" is not a string"));
    assert!(refused(json!({"kty": 1})).contains("\"kty\" is not a string"));
    assert!(refused(json!({"n": RSA1_N})).contains("has no \"kty\""));
    let mut bad_kid = rsa_jwk("rsa", RSA1_N);
    bad_kid["kid"] = json!(7);
    assert!(refused(bad_kid).contains("\"kid\" is not a string"));
    assert!(refused(json!({"kty": "EC", "crv": "P-256", "x": P256_X})).contains("has no \"y\""));
    // The rsa crate's structural checks, reported in the broker's words.
    let mut even = URL_SAFE_NO_PAD.decode(RSA1_N).unwrap();
    *even.last_mut().unwrap() &= 0xfe;
    assert!(refused(rsa_jwk("rsa", &b64(&even))).contains("modulus is even"));
    let mut big_exponent = rsa_jwk("rsa", RSA1_N);
    big_exponent["e"] = json!(b64(&[1, 0, 0, 0, 0, 1]));
    assert!(refused(big_exponent).contains("exponent"));
    let mut even_exponent = rsa_jwk("rsa", RSA1_N);
    even_exponent["e"] = json!(b64(&[1, 0, 0]));
    assert!(refused(even_exponent).contains("exponent"));
    // Unsupported curves are skipped even when their members are incomplete, private keys
    // of a supported type are refused even on an unsupported curve.
    let skipped = jwks(&[
        json!({"kty": "EC", "kid": "k1", "crv": "secp256k1"}),
        json!({"kty": "OKP", "kid": "x", "crv": "X25519"}),
        rsa_jwk("sig", RSA2_N),
    ]);
    assert_eq!(JwtKeySet::from_jwks_json(&skipped).unwrap().len(), 1);
    assert!(
        refused(json!({"kty": "OKP", "crv": "X25519", "x": "AA", "d": "AA"})).contains("private")
    );
    // Padded base64url, as some publishers write it, is taken.
    let padded = json!({"kty": "RSA", "kid": "p", "n": format!("{RSA1_N}=="), "e": "AQAB"});
    assert!(
        JwtKeySet::from_jwks_json(&jwks(&[padded]))
            .unwrap()
            .contains_kid("p")
    );
}

#[test]
fn pem_forms_are_detected() {
    let signing = EncodingKey::from_rsa_pem(RSA1_PRIVATE.as_bytes()).unwrap();
    let token = sign(Algorithm::RS256, &signing, None, &claims(json!({})));
    for pem in [RSA1_PUBLIC, RSA1_PKCS1_PUBLIC, RSA1_CERTIFICATE] {
        let mut keys = JwtKeySet::new();
        keys.add_pem(pem.as_bytes(), None).unwrap();
        assert!(verify(&JwtSettings::default(), &keys, &token, CLIENT, NOW).is_ok());
    }
    let es256 = sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(P256_PRIVATE.as_bytes()).unwrap(),
        None,
        &claims(json!({})),
    );
    let keys = pem_keys(P256_CERTIFICATE, "cert");
    assert!(verify(&JwtSettings::default(), &keys, &es256, CLIENT, NOW).is_ok());
    // A certificate's key is bound to its family like any other.
    assert_eq!(
        verify(&JwtSettings::default(), &keys, &token, CLIENT, NOW),
        Err(JwtError::UnknownKey { kid: None })
    );
}

#[test]
fn pem_errors_are_clear() {
    let refused = |pem: &str| {
        let mut keys = JwtKeySet::new();
        match keys.add_pem(pem.as_bytes(), None) {
            Err(JwtError::InvalidKey(reason)) => {
                assert!(keys.is_empty());
                reason
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(refused(RSA1_PRIVATE).contains("private key"));
    assert!(refused(P256_PRIVATE).contains("private key"));
    assert!(refused(&RSA1_PUBLIC.replace("PUBLIC KEY", "RSA PRIVATE KEY")).contains("private key"));
    assert!(refused(RSA1024_PUBLIC).contains("1024 bits"));
    assert!(refused(ED448_PUBLIC).contains("unsupported"));
    assert!(refused("hello").contains("no PEM block"));
    assert!(refused(&format!("{RSA1_PUBLIC}{RSA2_PUBLIC}")).contains("more than one"));
    assert!(refused(&RSA1_PUBLIC.replace("PUBLIC KEY", "OPENSSH KEY")).contains("not supported"));
    assert!(
        refused("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").contains("corrupt")
    );
    assert!(refused(&RSA1_PUBLIC.replace("MIIB", "MIIC")).contains("corrupt"));

    let mut keys = JwtKeySet::new();
    assert!(
        keys.add_pem(RSA1_PUBLIC.as_bytes(), Some(String::new()))
            .is_err()
    );
    assert!(
        keys.add_pem(RSA1_PUBLIC.as_bytes(), Some("k".repeat(MAX_KID_BYTES + 1)))
            .is_err()
    );
    assert!(keys.add_pem(&[0xff, 0xfe, 0x00], None).is_err());
    assert!(keys.is_empty());
}

#[test]
fn hmac_secrets_are_checked() {
    let mut keys = JwtKeySet::new();
    assert!(matches!(
        keys.add_hmac_secret(&SECRET_32[..31], None),
        Err(JwtError::InvalidKey(_))
    ));
    assert!(matches!(
        keys.add_hmac_secret(b"", None),
        Err(JwtError::InvalidKey(_))
    ));
    keys.add_hmac_secret(SECRET_32, None).unwrap();
    assert_eq!(keys.len(), 1);
}

#[test]
fn key_set_size_is_bounded() {
    let mut keys = JwtKeySet::new();
    for index in 0..MAX_KEYS {
        keys.add_hmac_secret(SECRET_32, Some(format!("k{index}")))
            .unwrap();
    }
    assert!(matches!(
        keys.add_hmac_secret(SECRET_32, None),
        Err(JwtError::InvalidKey(_))
    ));
    assert!(matches!(
        keys.add_pem(RSA1_PUBLIC.as_bytes(), None),
        Err(JwtError::InvalidKey(_))
    ));
    assert_eq!(keys.len(), MAX_KEYS);

    let many: Vec<Value> = (0..=MAX_KEYS)
        .map(|index| rsa_jwk(&format!("k{index}"), RSA1_N))
        .collect();
    assert!(matches!(
        JwtKeySet::from_jwks_json(&jwks(&many)),
        Err(JwtError::InvalidKey(_))
    ));
}

#[test]
fn debug_output_holds_no_secret() {
    let secret = b"correct horse battery staple, and then some more";
    let mut keys = JwtKeySet::new();
    keys.add_hmac_secret(secret, Some("hs".to_owned())).unwrap();
    keys.add_pem(RSA1_PUBLIC.as_bytes(), Some("rsa".to_owned()))
        .unwrap();
    let shown = format!("{keys:?}");
    assert!(shown.contains("hs") && shown.contains("rsa") && shown.contains("Hmac"));
    assert!(!shown.contains("horse"));
    assert!(!shown.contains(&format!("{:?}", &secret[..8])));
}

#[test]
fn malformed_tokens_give_errors() {
    let settings = JwtSettings::default();
    let keys = hs_keys();
    let good = hs_token(&claims(json!({})));
    let payload = claims(json!({})).to_string();
    let header = br#"{"alg":"HS256","kid":"hs"}"#;
    let cases: Vec<String> = vec![
        String::new(),
        "hunter2".to_owned(),
        "a.b".to_owned(),
        format!("{good}.extra"),
        "..".to_owned(),
        format!(".{}", good.split_once('.').unwrap().1),
        "!!!.eyJ9.c2ln".to_owned(),
        format!("{}=", good),
        format!("{}.{}.c2ln", b64(b"not json"), b64(payload.as_bytes())),
        format!("{}.{}.c2ln", b64(b"[1,2]"), b64(payload.as_bytes())),
        format!("{}.{}.c2ln", b64(br#"{"alg":7}"#), b64(payload.as_bytes())),
        format!(
            "{}.{}.c2ln",
            b64(br#"{"typ":"JWT"}"#),
            b64(payload.as_bytes())
        ),
        hand_hs256(
            SECRET_32,
            br#"{"alg":"HS256","alg":"none"}"#,
            payload.as_bytes(),
        ),
        hand_hs256(
            SECRET_32,
            br#"{"alg":"HS256","crit":["exp"]}"#,
            payload.as_bytes(),
        ),
        hand_hs256(SECRET_32, br#"{"alg":"HS256","kid":5}"#, payload.as_bytes()),
        format!("{}.", good.rsplit_once('.').unwrap().0),
        // Correctly signed, but the payload is not a unique-member JSON object.
        hand_hs256(SECRET_32, header, b"{\"sub\":"),
        hand_hs256(SECRET_32, header, b"\"alice\""),
        hand_hs256(
            SECRET_32,
            header,
            br#"{"sub":"alice","sub":"root","exp":1800000000}"#,
        ),
        hand_hs256(SECRET_32, header, &[0xff, 0xfe]),
    ];
    for token in &cases {
        match verify(&settings, &keys, token, CLIENT, NOW) {
            Err(JwtError::Malformed(reason)) => {
                assert!(!reason.contains("alice"), "{reason}");
            }
            other => panic!("{token:?} gave {other:?}"),
        }
    }
    let huge = format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES));
    assert_eq!(
        verify(&settings, &keys, &huge, CLIENT, NOW),
        Err(JwtError::TooLong)
    );
}

#[test]
fn noise_never_panics() {
    let settings = JwtSettings::default();
    let keys = hs_keys();
    let good = hs_token(&claims(json!({})));
    for seed in 0..2000u64 {
        let bytes = noise(seed, (seed % 200) as usize);
        let _ = looks_like_jwt(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        assert!(verify(&settings, &keys, &text, CLIENT, NOW).is_err());
        // Damage one character of a good token.
        let mut damaged = good.clone().into_bytes();
        let at = (seed as usize * 7) % damaged.len();
        damaged[at] = b"A.-_=x/+"[(seed % 8) as usize];
        if damaged != good.as_bytes() {
            let damaged = String::from_utf8(damaged).unwrap();
            assert!(
                verify(&settings, &keys, &damaged, CLIENT, NOW).is_err(),
                "{damaged}"
            );
        }
    }
}

#[test]
fn looks_like_jwt_tells_tokens_from_passwords() {
    assert!(looks_like_jwt(hs_token(&claims(json!({}))).as_bytes()));
    let eddsa = sign(
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap(),
        None,
        &claims(json!({})),
    );
    assert!(looks_like_jwt(eddsa.as_bytes()));
    for password in [
        &b"correct horse battery staple"[..],
        b"",
        b"a.b.c",
        b"..",
        b"my.dotted.password",
        b"eyJhbGciOiJIUzI1NiJ9.e30",
        &[0xff, 0x00, 0x2e, 0x2e, 0x80],
    ] {
        assert!(!looks_like_jwt(password), "{password:?}");
    }
    // Base64url JSON, but no "alg".
    let no_alg = format!("{}.e30.c2ln", b64(br#"{"typ":"JWT"}"#));
    assert!(!looks_like_jwt(no_alg.as_bytes()));
    let with_alg = format!("{}.e30.c2ln", b64(br#"{"alg":"none"}"#));
    assert!(looks_like_jwt(with_alg.as_bytes()));
    let random_hits = (0..2000u64)
        .filter(|&seed| looks_like_jwt(&noise(seed, 64)))
        .count();
    assert_eq!(random_hits, 0);
}

#[test]
fn settings_are_validated() {
    assert!(JwtSettings::default().validate().is_ok());
    let bad = JwtSettings {
        clock_skew_secs: MAX_CLOCK_SKEW_SECS + 1,
        username_claim: String::new(),
        client_id_claim: Some(String::new()),
        acl_claim: Some(String::new()),
        issuer: Some(String::new()),
        audiences: vec![String::new()],
        require_exp: true,
    };
    match bad.validate() {
        Err(JwtError::InvalidSettings(reason)) => {
            for field in [
                "clock_skew_secs",
                "username_claim",
                "client_id_claim",
                "acl_claim",
                "issuer",
                "audiences",
            ] {
                assert!(reason.contains(field), "{field} missing from {reason}");
            }
        }
        other => panic!("unexpected {other:?}"),
    }
    let skewed = JwtSettings {
        clock_skew_secs: MAX_CLOCK_SKEW_SECS + 1,
        ..JwtSettings::default()
    };
    assert!(matches!(
        check(&skewed, &claims(json!({}))),
        Err(JwtError::InvalidSettings(_))
    ));
    let edge = JwtSettings {
        clock_skew_secs: MAX_CLOCK_SKEW_SECS,
        ..JwtSettings::default()
    };
    assert!(edge.validate().is_ok());
}

#[test]
fn error_messages_do_not_echo_the_token() {
    let token = hs_token(&claims(json!({"exp": NOW - 1000})));
    let error = verify(&JwtSettings::default(), &hs_keys(), &token, CLIENT, NOW).unwrap_err();
    assert_eq!(error, JwtError::Expired);
    let message = error.to_string();
    assert!(!message.contains(&token) && !message.is_empty());
    assert!(JwtError::TooLong.to_string().contains("16384"));
    assert!(
        JwtError::UnknownKey {
            kid: Some("k1".to_owned())
        }
        .to_string()
        .contains("\"k1\"")
    );
}
