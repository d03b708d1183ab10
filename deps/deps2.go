package deps
import _ "golang.org/x/crypto/bcrypt"
