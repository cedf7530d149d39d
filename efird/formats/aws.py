"""AWS EC2 UEFI variable stores (``aws ec2 get-instance-uefi-data`` / ``register-image
--uefi-data``), the format python-uefivars calls "aws".

Layout (all integers little-endian; established from python-uefivars ``pyuefivars/aws.py``,
``aws_file.py``, ``aws_v0.py`` and checked against its ``testdata/t02.aws``)::

    u64  magic    0x494645554e5a4d41 (b"AMZNUEFI")
    u32  crc      CRC-32C (Castagnoli) of everything after this field
    u32  version  0
    ...  zlib stream (level 9, preset dictionary _DICTIONARY, zlib header) of:
         u64 count
         count x { u64 len, name (UTF-8, no NUL)
                   u64 len, data
                   16 bytes GUID (EFI byte order)
                   u32 attributes
                   if attributes & 0x20: 16 bytes EFI_TIME, u64 len, digest }

AWS tools carry the blob base64-encoded; ``read`` and ``probe`` take either form and
``write`` returns the raw blob (base64-encode it for the AWS CLI). An absent timestamp or
digest is written as zeros, as python-uefivars does. ``digest`` has the meaning it has in the
QEMU JSON format (see efird.formats.qemu_json): only the 32-byte signer identity is kept.

Names are UTF-8 with surrogate pairs joined. A name holding a lone surrogate (possible in
UCS-2, impossible in UTF-8) is written with the surrogate's 3-byte form so efird can read it
back exactly; python-uefivars' strict UTF-8 decoder rejects such a store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import zlib
from collections.abc import Iterable
from functools import cache

from efird.efi import time as efitime
from efird.efi.guid import guid_str
from efird.formats.errors import FormatError
from efird.formats.qemu_json import (
    APPEND_WRITE,
    DIGEST_SIZE,
    NON_VOLATILE,
    TIME_BASED_AUTH,
    interchange_name,
    sort_for_store,
    units_name,
)
from efird.variables.model import Variable

__all__ = ["MAGIC", "VERSION", "FormatError", "crc32c", "probe", "read", "write"]

MAGIC = b"AMZNUEFI"  # the u64 0x494645554e5a4d41 in little-endian order
VERSION = 0
_HEADER = struct.Struct("<8sII")
_B64_MAGIC = base64.b64encode(MAGIC)[:10]  # the first 10 characters depend only on MAGIC
_MAX_PAYLOAD = 64 << 20  # far beyond any real store; bounds a zlib bomb
_MIN_RECORD = 8 + 8 + 16 + 4

# The zlib preset dictionary of format version 0 (python-uefivars UEFIVarStoreV0.dict,
# 11381 bytes), kept zlib-compressed and base64-encoded here; it is part of the format, and a
# different dictionary would make every compressed stream unreadable to AWS.
_DICTIONARY_SHA256 = "b6c4f52acbb0ab9aa415290e6c223af871eaa3d430c96b8116899d994681535b"
_DICTIONARY_PACKED = (
    "eNrtenk8VPv7+JnN2MeWkm0o+3aMLUtF9pB9ayUmM7axjC2yJURKkkJFkStlSakUFymRm0hJ26UQhSghKb7nzEz3aq5u"
    "fa5/fn/8zryOM+8zz/N+v5/n/ewPrUJwhM/oC7soj+xJAEgq6zvVHqykYHFX7ILIbERzFGb248fJaYQhRhZgQSW86nCT"
    "tWAJA9Cx9Wh2EW4WHlZ2NgxWHYtmx6GwbJxYNIaFdV+DmzvJDM+GRQWe1nuUdBzRDay2xUnyWtpyIhEAEA9INF9zI5EA"
    "ABoAaOhmhW6kOIqPHXrOzwMV0MO9pz/17pEHvCVcQO9xlMIBQ4AC+APWQAhAhYERnEC7AQqGBxAIFgAQp79BYAAEiksP"
    "+MVLH0haylI4xBKQx5aysoKcyylS1B7z/DYi8DVP+KhiuaLn3Pz8fC+OTti8MqjIgnJEo/ilrMgeQZRgyi4q3pns70kJ"
    "C8bbBFE8QzyoZIo/3sbQAE8AVVXBeIQkyMXCJp9oljjNhWBnnAvz/iwBd2h/XtAvRH8v6KRKHNcDWGAlNEYtAm0D+ELw"
    "VGAXRFUQ4AcsxIaQGdiy0BgL3YJdphZdxXbGJ43+KFXGWc6YQ7BkCJsMYfkCBtA3KkCEZgmAntbQfJ7QKIiGzbIkbMyS"
    "sFH/GRu6JAZijpQdXWm1X86s5gl750oNgABoAOoACH1Uoe9q0HcNQBMYirmELpviMKt9pPXkwPb9JU7QxEGAMXQH0Vhr"
    "QmO0F015Shz1IHYmn2ifvnJr9yPoBzK0GjfjPP0Hfn/yPOSJ+eXHVeoSOI/dHrSdUKEd7WRA0CdYBQ0Q8gAS3mR3DYom"
    "Unj6g1IrvZy9bJi3/I9KChpp3ISUZWD+Ny7wqTvBS9oALhA9oYAhJPowVUQIGVIBZwjbH4KkAGFAMMD7MMcESJdZ32AF"
    "LZe8iMDROfIL6oOszfkc5ooiWNW6yX4cPBRuwcKhwIJAI+K11qJgXnktRTehba75tk3YwDGvBdhAM8Hn4gFEAErJvJ05"
    "ggzw8nKYkUiAIjnytqBlt2mx9Is7gvfq+2Duw6xnfg2rDQKCR0EHgIHUgPfBQW0gv4UcpFvLvChqBRqImUcDmy6wxvHm"
    "uVrt43610k7RtRKa2Bawokkc/IGJN18KZ8FFCI69/ISsWseF/Hq4SEyow1q00O61X6X+gWI3KwPxDGIe+wJ4LFDiuJZG"
    "179dfNDtssguNyxfoAL/fsGEVjJP4fPDY4eF+cd0o2iqESMPytJtrsTfNteQEhRACXKnGVsLYwv84vYWAXEONbG01ela"
    "yMx7C5qW+UN/fYEdAKAF0GVSEdI2E2hePG1uKgMIVlQ8YA+QaOC+sGJjBYCW2mtRw5/UrUveruNeZIvwChF/CRDdrdo+"
    "PpYHAJyM04CtPKTb6tDcspCsGUBargP8yNbJLUYpEsUhBdg5wNYCgPZHhm4qzbWEQGaBTtFfC/3rJQ38CptsAAsI5rRr"
    "/dn+zN82JlWdX7ZVYTyonW4AgcuofzIBjEflg/HI5HwUEoFEsgFzk8lDE1n176Ezrl7ase5eGroWQZVAUNfYvJyLoAlq"
    "EqChGjwE4+JUOUA2WFxZ+JGO9qr8IC88YOVnd3YPJpH9vagUf1UekBt+ieXH2hE9/Sj+nqpioAj8hh06Ts2lHScBBOnK"
    "Ive3sthRKJDGEIOo5F1kD3cqEW8QQiVRgsjUCFhpQFBsOZcqpDuq2qpr1FXVCTSi6EMNeAjGJTCIoi7ULQ5It+KhuFPg"
    "S1Sg7dmIm/6VY9rravTscP4K63n4g+eKSe1mRepWKVkY6XeqJunuEV2wofwVaeKhWet/nE/j0o5M4AfB1wZoCgpzCAHJ"
    "Pn2nggw94BwJrZcNyDbMDwp8t9UoNc+QpiNUCNMPOiwKDRNWF9hI0jFgfNRPKFWEbli589BClloGnVYneFKPFa//+tmK"
    "5tLhGCQCcIDuAGgME/kt5HOnBQAUGtkwvbHQzcbgHMAYY+hk0MI4+MkIYQF4hyjg0ZRT66GhM1t3kjrWZqZvedyWs+IW"
    "6ASdsag42hq0Ai3yzfNNE41JVGqAjoqKR5Cvst83eVL2oPipBPiQ4bcqAfSgN1gFEjdIziApg4RrByxWSqCmEkFNGQIC"
    "N7OwQnEABoNFINCbQEtw47cxiExcx1giLCzsuyVgKye5tBOHxO3XvdY/3TMKxwGH0/MoBCIGgQYQaAEgd/PmxG3XLE0T"
    "HIkdvydYvEJx8zPPhWIXAOxNG3p/T1N4P58Vmmp5bp+MKXaLtQ1dpgFgh4mT2fwcGjADhGZgGvDAgoODrnDFiZLIzBzD"
    "07HKApsawzKu9QDA5rmFZ/fv148k9v1Sgi+YsG+03kQwvMKqn+xkJWMnvf3B6SNu/hbZKEtJPWmcnhMtDvWkyTLdzQUD"
    "myDTR9efn2uNJGPeOxwF46zlTsbZtwAethYdI3toLg9apEsEvmm1Mc3/7oT8D6yfCNr8AD1L+jkrZRmG6L9mIq2VQo91"
    "1mYZF9Q8bef2IlLgfCAcdpeCtxosbTL0L5wzmNE8YihryVgPNgUFxdfzRdHFZjVJjX58wtvX9lXc2nD8i4hAzuzH5mxK"
    "9WqZMoN+z9wjloVHs4XD7a45Ms/FyjBzvPoBw0iBTt6DYfTQ1QoyJIZ/maZfox2xBNoRjEz0Z+vAZlkI2rCxOcHVaITL"
    "8uK9kxe1e7Cc38+Mh7zfIhfi2xcDKpXoF0DFqwKTKnsLPp+Y7crABcmuftaPMlZ/sGUfdrWP7tE9F/yF23Yzhyi3n3Sf"
    "TnzVrMRWXiJPiVEOTuJa5zmtuIl1zCvCOwGH+0fEv3Ik4ZqFL/EsH/7c74FxWXagBNfOrk49s+wTPnKbFdhZmOEbz+WY"
    "cBV65js3uvjtbZv8WMZ6lUc7YnQ/gao0PmrPuYsZ3mU2c+XY0TOuhpdmd0jx5Pes77d0adnOfg2dJBdCOn8skBne/nDj"
    "mVleCWRRidhzqbKwl3nbKGz32N5V2mRL1t1zzXjLDN8lvSxa1DswtWH1+bQzUTeIWMV8nUgfqT21rbVuU9snOr6Dp1nQ"
    "XzahTcwWhubvf44Lm/rLi1gnWUYJ6z+LIBKFxrBgWeli+ILzxpl+Zba+wdvTWeQaQKKWrKY2VopudYh9x7L3xm18wpPp"
    "B6kTayrOF5YqRe2MwMz3bVyP1sAH9N0a9Ok9Ua8Z8iZF9UVawMBzrSqqSZbsliS3VYp1z03Pek3bypwKGsYWtVSL6dpr"
    "RA10jshUJ4nMVbesYqMUmxxu8M/SM+hsLVi/DeltNUIWl5Ldqjn/1XAZe2av0OX7PTf5Xt3cIvNOJhxM3SLP5iO5395N"
    "ULGeJGp/fcR84qT7gX0ktmCjbXvOOCi8iJhedl9jm6+Iwta2mhOrUin+VdJPNPkbrbtkyqoJugYZii/v3AsbKnHYNL2V"
    "A51EvGy4oriy108obGTz6s9mKCQKASAK4hGGUJK0HuRhYWOk5ssQaCi6BkBR2PlzowXRAufkkNoHBW8dC7+XPnPKOudl"
    "lGO5PSj0F4IAEs0pxg7lCiGQOTMEDEAOGBOHhqdJBHG3hqpS6kqdpSukG98OzjrvNkJuw3I93ThAlX9dgRvxGx6Jqe7b"
    "7EGI4l1uzd3H8duaZUcONk32JlzMyVUcnLx6uIvt5at6dPEFUKTHbILFJsfzN9uY5n3Wh/CJbXMqL/Pm4+tH39xr+2jv"
    "vVOHw7D6ldTXOczMw1sC53lfrdqfFnC1UNRqpGzgxGfBm48bWh8O3VIZyH63OhU1kvYh9W3jxllDXj6O6CrTDN/nr9H7"
    "hyfV0MM8CPnAgZm9/HrzUmwqpFCT+evWvz8vDZR3KZnlfhCxtj+XqPuHnHzelyDXM8NlGWNTGvyxTciR/h1/nAy9N+aR"
    "0VAeoZ8QkRTTZ1c8dDISSz607BufrSE+W/wrn3d+MbyXv66w1YvvwZYnjhci/7iSsuPX+QwP+BGIeTQGhCKUeVCcBdbW"
    "X9XVjH/qmwbrhnnwj7bpUM5SHpKLhpwJIVQmaozPQGaD8MYSv7g1Zq78jhNvXNSLBDniS7aVxj+N3WvAcuiy6AdU9cTK"
    "bcLvbdJnLjkmbJAVwddWltkK3K6/cOyohEj6M9yXsFNHgw8n362ttavG2HD1OJ/Kdx/lGvCTeqKPW67f3Faw8aZVeQ6f"
    "KKvDodo7NdUKa80VxAlfvCXI1rnN0RvUv2iyLE89hNevv5QjFSJzrwVVMLWtY1DTYXe1TVUnXwe27ga157nYodhHoys+"
    "qggI+qj8uetAxaqBOwndo28b1OJLnSxWKL0nHcXeuz8eNF5240XivuOKEpZqCuO4jeOkpKoMR0LIae94b70CKd7C0dLH"
    "6LLWbn3X/ISOo5Y7D0uupIoeWGvKbVTUX5GrrnHx8xX7YsW4kUJMYPPJa9eHhI129Zs6cB90irmUJ3i8MrGdtC59VZXK"
    "9kM2+9Ka0uJ3GJz+qMzVm/3AN6T/CrlKIvEztmPqlVXH01LFMHsxKYLWHV+7oKOJFe813L2FJit142ycighKc2f2z2xI"
    "lFnheDr+7ubcT+BxB4Ei0ywplWbpfoPMlVuR6wey+vZt0Vu3/oapYJDjKynJi08iB1Es8gXTYukmjQBXl9D+Pm4NmZ2o"
    "wGVFY+0y+fmuWm6f1mRe6w0P+HTdMjEpc6q3DGn8jnjzSkE0WTAEm5E7WVTjuteFYellFkhKP5aNh0cT8530sAJMmfjC"
    "jBC0VVUA5egZqCSU3eLN3Kl4e6JHSBARvwFOQ2VtLFTggo0PMQKvKqcqCeL/wmdDCPIHEz3cfaFMVT+I6Elyp6UatPRU"
    "XRVUg3JUVQ01LSg9VdNSBQkajOH3S/5avQKudK37l1zw77ILGwLO0hwhX2MA+ZcAeu3mYULypEDmCuRdeb1Z+QwRzsf5"
    "He+H7HYVvztTFbI7HShRKgzd/DbiarWWt20kj+fUS88PSK/fp4uFw2uvtyW7eHJ2OTcLFezAdD1raie3mVkQrg5vewBO"
    "1k9eux6OLVCYy32m7pQwEn+3zEAq4ITPm7l03OMs8YHBTPFKec40i3lZOZ7I6cdRZztCqzHNEaO49IwTN+d6KNG+uMiH"
    "DcYv1G2ztHED2526V2CyPmKLNlzKD/vKKvQh0OmPvMRVhUmtRV9doh+SvZYdjo77EMM/wJWaopeUMNzXVms4UKqUcOSg"
    "t8LmKKPPdiVxzUoiN3rtegDeTzlrG9wqXqpVFSR3EIXYVw5eiCpsiE/atOaiCtdtgSTK1zTlGu0rg68be/vvySSMZW4Y"
    "k0tNNzHQjRP26p4xdCW2ctV8BTKsP4bo/nZu9RcbA/2IXiVrdm+ZUH+70SxyZDluOgnTbnyz1F4gTnwWRJdoabo/3UgW"
    "Vu8mjXYh7/tmcnbe95WMKL04XoM6Y+J27hb2pkT8+68fhiIIbnXdF85KCljcbei2GN6z3lmj8rV1yOUKN5SkfdnhCNGu"
    "XAPxZYkOAZV/cmngoirUg64fc9Mdjxg+Uymy7YzgtaTbb4Snqo5JUdbk9R3+nBJxvJHMfbVABI859umuQBnw+NZEvQBP"
    "iI96vnBVttvE1orbzps0HxAS6k7BIvYzNYHT7vbvS1rtHiOyU9HX7d97KtXtmVdrKpB/kZjnxj8nqKxIeN864Mccqsk1"
    "Ddtd1tM5narYPepf7BY1pvf55fU5XmLI1g+vBRI2GjHDp88OcpO71PTT1i3nJBGeVT5g65WRkum5stb8wdGgoo+WzPA8"
    "lAtv74983QTqUj/G5scef9Ueq3CEcvAOtU1iQjCRdIIZfvkmHY4thk1F2Bud+tYYdbG197V3erVlfqriVl517mkGJzO8"
    "QvZ96Q3KGXOaO+osGrlkWH1PvbTYTZk3mlXxSUeQs7WZ4ZUDDnslFk0H24r/tkL8PE40oMq5iaB8blVlcWe1gm35Hmb4"
    "9W25eT3rxk862FXMbO+Pu3l13I+qExwR6HgwgN+7bV0wM7zpH6zuMq9YchJ7dXzGFB/yfLq92c/nmaYEqVFYsU9+cw8z"
    "fOCHdMoDSfNohwKTnedXH/vSzIMPw03yk970Palr/eoRwgwf/0y37fIUq2HbyWONHUn3cl0N7q0d4uF2oSg8ddJy3uHF"
    "DJ/SZeb6/mjVZFp5SSaHt7vXha7dyf6HTI54Lg+SuO1qXM0Mn3bwzP77g+wi2PPBxFbZd7ajnXofbPyGkmdLu7jrYs1E"
    "mOHLhstUbWX4gkePlih78WqPqp7b5wXqqEke/6TFdu7R5tPM8LfYai+YhpR2P8sokay6umL2QOZpE0XxN4WC1dtS1JJv"
    "fmGGb1reUHzxnXyciGxVsbDl3sctqVs4ZWRF3ZHY4dcZN7NimOFbcGq7ll8bnNl7zIG/5dh7juBh6Zju05zVfbV1TV7n"
    "n6Uyw3s6b3nCF56jLFDqNKUublfu84lzxggIdw15M75JyfOxMTO88Z3mshD2+zfMvmjZ7fHke+FpVdZ9WO9eyuoWq31k"
    "r56DjFQDiVhSVQmB/hGE7089iiojZ8VDHuVbp8AW+mYFjfGAEeAE3UqAHZTFWH3XQVKFPvhFtkZv7mPg5v6ibahfy90E"
    "GObqVyujSFr9Zwn9pO94Qlha76S/nCh4Gs0iAOw9i45ad0rEupTYa0dqv9yxsPxHr/v8isk25Vy8bPPPvgWWhY41jPln"
    "3wOMxzwG41F19L4Fuzs21IkeOzGHS3HJS+kX/H+B+39V4MC4w0tqBPEvW7TXqaoLatMjXcLivVAHEjnIE2/jHkSNwFu5"
    "B/kQqQG+7h5EWguI3ucBNQnqBFBdlaD9rXkFDTXgIRgXu6Q9/68F8pkHvDmc9Bb9QtbhHY1NzP+toRuPwAHQe3ZkPAIB"
    "nGX1tbxjzOZtwVlYnxTDEsJpiHDw7BWMwY5m7OGoDK7jZG/aaOyef1tQKatzUiF/1so81yA2Xa/a4evrmo6TtwpXpMQY"
    "pGx13Usi3Dhg2vIusEbCOiclat5ofdohQqW0WVlI1bsWS7GNQtH98Tmi4WFWnBW1U7hOwc6azwpnbddsm5y9/iwc+Wx+"
    "hF0469Hea0L8b67UR+pHvhSXlWn5POa0XeR1dGZ0/bhRZYT2wNPKnalWdWsCXpFWC7SoFbJqPXIhb++MGm1A27MObqqQ"
    "T/Jgdad4LHN9W6kQ8ZjT3Stly9ftpUkx1xO9rANd+CTRkpJtqWMOgUCbjYZL6FHWd94XzyAefas2hEIcCQL5FlYbMLTf"
    "wFV/v0PCVYdPDT5XY8LsN05IaYluOi0dicMHxC4oSvCX1hmy1cYHnDjwyFrV/5Hk8RThh0spSkAvVqFXgIKxAsa77Axf"
    "Rrvw1nVtOrXKkVVXR9K7GNxKbzk5gvagbb51vlWixf/UcoJkHxJ5SN4hYYdknN54gntPGrTGk9uCxpMDaAfaLGg8Gf2g"
    "8cRYCEpCf77CIg3RJRRgfvXfQf4ny/ntn1i+JcY/U6h08YTItJrhY9LxfsnnU1oOkAJmeiywlVp7OZDNXiTwVN/4ePbG"
    "a67OTQZTa1Lndlmav9HSylA+jhDbImDzujhNimsy8fV5sFVf8G1aqmBigKHWh7b6wz2BAgezufdfsfRbLXagX8Vaqv06"
    "y6emIaEVocGicX7F3Zj7Os2Rss2aBYJccgeyc0jPz9dbpdVtvqFwTtsCfUxkRvPGbZ1EdFn5w/jI3vN/mmNIX6bKSCt9"
    "062chfQ8d6Gm7tjlTmfeP+J9mtRScj/bp6ZkO+ugtsj0J9x1luj3rUOhL+Ykn5bqbN+i/vZSS68VWi76mls1ZqzqyXIX"
    "J0G3apAwrrmx8UNEGp9+wARdoSLBCJolFOVHIyGfocjC5pZohkj8tAHBhRYXFLUOIPrb21viTYn+RMjyEj0XttcXKJPe"
    "G7e+eaHT7JEFGz6mbVC+/OhE0Mh3OrEoALNMQaey1Soj+XL8DtHSVN6RHpai3WcV8rQcOdP8MUDpVU6D/eT7XUSWXNvw"
    "B6V36k48xwTHDIpp819+ewXcox9y/oQhR0/FTeE6sPfjXP2znRLHp26X/6lrbc7+WmwmsWI9V9dDE61nDtTt87w33ZoC"
    "XG6LUEYqu/0pjTVqSWsKJ4w8T6jrymZKh8vkCS4f0iWzS50L1ow+pbV1ZGj9s8MzfJfWtg2+WNZYdgCDd889+mdu+eeL"
    "W0UGjg02qvPum0yRkS4M0BzhnNq7Nn1ac2JmYtnD9J2/218u7zQvH/sYPBQZ2m8kr3U9rjCbU0d1dWB+f//Vla2m/SWS"
    "98dC3GP7DK+aOQfzrg3PJTMHXysYwdeXxYOvISj4av8WfLF3JNMdD4OxrAjEoj7ox4G9AQKDYOqA0qK5hRP9cuW1Yyn/"
    "B/azXTz4P2u32fc="
)


@cache
def _dictionary() -> bytes:
    raw = zlib.decompress(base64.b64decode("".join(_DICTIONARY_PACKED)))
    if hashlib.sha256(raw).hexdigest() != _DICTIONARY_SHA256:
        raise RuntimeError("the embedded AWS zlib dictionary is corrupt")
    return raw


@cache
def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected, as google-crc32c computes it): zlib only has CRC-32,
    and stores are small enough for a table-driven loop."""
    table = _crc_table()
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def probe(data: bytes) -> bool:
    """Whether data starts like an AWS store, raw or base64."""
    head = data.lstrip()
    return head.startswith(MAGIC) or head.startswith(_B64_MAGIC)


def read(data: bytes, source: str = "<aws>") -> list[Variable]:
    """Every variable in an AWS store (raw blob or its base64 text), in file order."""
    blob = _unwrap(data, source)
    if len(blob) < _HEADER.size:
        raise FormatError(source, f"truncated: {len(blob)} bytes is shorter than the header")
    magic, crc, version = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise FormatError(source, f"bad magic {magic!r} (expected {MAGIC!r})")
    actual = crc32c(blob[12:])
    if actual != crc:
        raise FormatError(source, f"bad CRC-32C {crc:#010x} (computed {actual:#010x}); "
                                  f"the data is truncated or damaged")
    if version != VERSION:
        raise FormatError(source, f"unsupported version {version} (expected {VERSION})")
    payload = _inflate(blob[_HEADER.size:], source)
    return _records(payload, source)


def write(variables: Iterable[Variable]) -> bytes:
    """The non-volatile variables as a raw AWS store blob, sorted by (GUID, name) for
    deterministic output. ValueError for variables a store cannot hold (see
    qemu_json.check_storable)."""
    out = [struct.pack("<Q", 0)]
    count = 0
    for var in sort_for_store(variables):
        name = interchange_name(var.name).encode("utf-8", "surrogatepass")
        out += [struct.pack("<Q", len(name)), name,
                struct.pack("<Q", len(var.data)), var.data,
                var.guid, struct.pack("<I", var.attributes)]
        if var.attributes & TIME_BASED_AUTH:
            digest = var.signer[:DIGEST_SIZE] or bytes(DIGEST_SIZE)
            out += [var.timestamp, struct.pack("<Q", len(digest)), digest]
        count += 1
    out[0] = struct.pack("<Q", count)
    enc = zlib.compressobj(9, zdict=_dictionary())
    body = struct.pack("<I", VERSION) + enc.compress(b"".join(out)) + enc.flush()
    return MAGIC + struct.pack("<I", crc32c(body)) + body


def _unwrap(data: bytes, source: str) -> bytes:
    if data.startswith(MAGIC):
        return data
    text = b"".join(data.split())  # the AWS CLI and editors wrap or end base64 with newlines
    if not text.startswith(_B64_MAGIC):
        raise FormatError(source, "bad magic: neither an AMZNUEFI blob nor its base64 form")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(source, f"bad base64: {exc}") from None


def _inflate(stream: bytes, source: str) -> bytes:
    dec = zlib.decompressobj(0, zdict=_dictionary())
    try:
        payload = dec.decompress(stream, _MAX_PAYLOAD)
    except zlib.error as exc:
        raise FormatError(source, f"bad compressed data: {exc}") from None
    if dec.unconsumed_tail:
        raise FormatError(source, f"decompressed data exceeds {_MAX_PAYLOAD} bytes")
    if not dec.eof:
        raise FormatError(source, "truncated compressed data")
    if dec.unused_data:
        raise FormatError(source, f"{len(dec.unused_data)} bytes after the compressed data")
    return payload


class _Cursor:
    """Bounds-checked reads over the decompressed records."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def take(self, size: int, what: str) -> bytes:
        if size > len(self.data) - self.pos:
            raise FormatError(self.source, f"truncated records: {what} needs {size} bytes at "
                                           f"offset {self.pos}, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def u64(self, what: str) -> int:
        value: int = struct.unpack("<Q", self.take(8, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.take(4, what))[0]
        return value

    def blob(self, what: str) -> bytes:
        return self.take(self.u64(f"{what} length"), what)


def _records(payload: bytes, source: str) -> list[Variable]:
    cur = _Cursor(payload, source)
    count = cur.u64("variable count")
    if count > (len(payload) - 8) // _MIN_RECORD:
        raise FormatError(source, f"variable count {count} does not fit in {len(payload)} bytes")
    out: list[Variable] = []
    seen: set[tuple[bytes, str]] = set()
    for index in range(count):
        where = f"variable {index}"
        raw_name = cur.blob(f"{where} name")
        try:
            text = raw_name.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise FormatError(source, f"{where}: name is not UTF-8") from None
        if not text or "\0" in text:
            raise FormatError(source, f"{where}: name must be non-empty and without NUL")
        name = units_name(text)
        data = cur.blob(f"{where} data")
        guid = cur.take(16, f"{where} GUID")
        attr = cur.u32(f"{where} attributes")
        where = f"{where} ({guid_str(guid)}:{name!r})"
        timestamp = efitime.ZERO
        signer = b""
        if attr & TIME_BASED_AUTH:
            timestamp = cur.take(efitime.SIZE, f"{where} timestamp")
            digest = cur.blob(f"{where} digest")
            if digest and len(digest) != DIGEST_SIZE:
                raise FormatError(source, f"{where}: digest is {len(digest)} bytes, "
                                          f"not a {DIGEST_SIZE}-byte SHA-256")
            signer = b"" if digest == bytes(len(digest)) else digest
        if not attr & NON_VOLATILE:
            raise FormatError(source, f"{where}: attributes {attr:#x} lack NON_VOLATILE")
        if attr & APPEND_WRITE:
            raise FormatError(source, f"{where}: attributes {attr:#x} have APPEND_WRITE")
        if not data:
            raise FormatError(source, f"{where}: empty data (a deleted variable)")
        var = Variable(guid, name, attr, data, timestamp, signer)
        if var.key in seen:
            raise FormatError(source, f"{where}: duplicate variable")
        seen.add(var.key)
        out.append(var)
    if cur.pos != len(payload):
        raise FormatError(source, f"{len(payload) - cur.pos} bytes after the last variable")
    return out
